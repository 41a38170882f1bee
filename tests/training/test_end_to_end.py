"""trainer/train.py on the real model, loss and input pipeline at a tiny size."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]

TINY_CONFIG = """
experiment_name: "tiny"
model_options {
  backbone { name: "kmax_resnet50" drop_path_keep_prob: 1.0 }
  decoder { feature_key: "feature_semantic" decoder_channels: 32 aspp_channels: 32
            atrous_rates: 6 atrous_rates: 12 atrous_rates: 18 }
  max_deeplab {
    pixel_space_head { output_channels: 16 head_channels: 32 }
    auxiliary_low_level { feature_key: "res3" channels_project: 16 }
    auxiliary_low_level { feature_key: "res2" channels_project: 8 }
    auxiliary_semantic_head { output_channels: 7 head_channels: 32 }
    instance_discrimination_sample_k: 256
    instance_discrimination_sample_temperature: 1.5
    semantic_sample_k: 256
    semantic_sample_temperature: 2.0
    num_mask_slots: 8
    transformer_decoder_num_layers: 1
    transformer_decoder_num_layers: 1
    transformer_decoder_num_layers: 1
    pixel_decoder_channels: 64 pixel_decoder_channels: 32
    pixel_decoder_channels: 16 pixel_decoder_channels: 16
    pixel_decoder_num_blocks: 1 pixel_decoder_num_blocks: 1
    pixel_decoder_num_blocks: 1 pixel_decoder_num_blocks: 1
  }
}
trainer_options {
  save_checkpoints_steps: 2 save_summaries_steps: 2 steps_per_loop: 2
  loss_options {
    semantic_loss { name: "softmax_cross_entropy" weight: 1.0 }
    pq_style_loss { weight: 3.0 }
    mask_id_cross_entropy_loss { weight: 0.3 }
    instance_discrimination_loss { weight: 1.0 }
  }
  solver_options {
    base_learning_rate: 0.001 warmup_steps: 1 optimizer: "adamw"
    training_number_of_steps: 2 backbone_learning_rate_multiplier: 0.1
    adamw_weight_decay: 0.05
  }
}
train_dataset_options {
  dataset: "kmax_demo_panoptic" file_pattern: "${DATA}/train-*.tfrecord" batch_size: 2
  crop_size: 33 crop_size: 33 min_resize_value: 33 max_resize_value: 33
  thing_id_mask_annotations: true
}
evaluator_options { eval_steps: -1 num_vis_samples: 2 transformer_post_processing: "pixelwise" }
eval_dataset_options {
  dataset: "kmax_demo_panoptic" file_pattern: "${DATA}/val-*.tfrecord" batch_size: 1
  crop_size: 33 crop_size: 33 min_resize_value: 33 max_resize_value: 33
  thing_id_mask_annotations: true
}
"""


def _env():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=str(REPO))
  env.pop('TF_CONFIG', None)
  return env


@pytest.fixture(scope='module')
def tiny_setup(tmp_path_factory):
  root = tmp_path_factory.mktemp('tiny_e2e')
  data = root / 'data'
  subprocess.run([sys.executable, '-m', 'kmax_tf.data.demo_dataset', f'--output_dir={data}',
                  '--num_train=4', '--num_val=2', '--size=33,33'],
                 cwd=REPO, env=_env(), check=True, capture_output=True, timeout=300)
  config = root / 'tiny.textproto'
  config.write_text(TINY_CONFIG)
  return root, data, config


def _train(config, data, model_dir, *extra):
  return subprocess.run(
      [sys.executable, 'trainer/train.py', f'--config_file={config}', f'--model_dir={model_dir}',
       f'--substitution=DATA={data}', *extra],
      cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_train_and_eval_with_the_real_model(tiny_setup):
  root, data, config = tiny_setup
  result = _train(config, data, root / 'model', '--mode=train_and_eval',
                  '--checkpoint_input_iterator=true')
  assert result.returncode == 0, result.stderr[-4000:]
  experiment = root / 'model' / 'tiny'
  assert (experiment / 'ckpt-2.index').exists()
  assert 'Evaluation (percent): PQ' in result.stdout
  assert 'step 2/2 | loss' in result.stdout
  assert (experiment / 'vis' / 'predictions_step2.png').exists()
  assert list((experiment / 'train').glob('events.out.tfevents.*'))
  assert list((experiment / 'eval').glob('events.out.tfevents.*'))
  # DeepLab2's checkpoint keys: model items, optimizer, backbone_optimizer, global_step.
  import tensorflow as tf
  keys = {name.split('/')[0] for name, _ in tf.train.list_variables(str(experiment / 'ckpt-2'))}
  assert {'encoder', 'optimizer', 'backbone_optimizer', 'global_step',
          'train_iterator'} <= keys
  # Restart: nothing left to train, the step stays at 2.
  again = _train(config, data, root / 'model', '--mode=train', '--checkpoint_input_iterator=true')
  assert again.returncode == 0, again.stderr[-4000:]
  assert f'restored from checkpoint: {experiment}/ckpt-2' in again.stdout
  assert 'training until step 2' in again.stdout and 'step 4' not in again.stdout


def test_bad_config_is_a_clear_error(tmp_path):
  bad = tmp_path / 'bad.textproto'
  bad.write_text('trainer_options { solver_options { no_such_field: 1 } }')
  result = subprocess.run(
      [sys.executable, 'trainer/train.py', f'--config_file={bad}', f'--model_dir={tmp_path}',
       '--mode=train'], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert 'Error in the config' in result.stderr and 'no_such_field' in result.stderr
  assert 'Traceback' not in result.stderr
