"""The README demo config: parses, builds a small kMaX and trains one step through the trainer."""

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf import common
from kmax_tf.config import loader
from kmax_tf.model import builder as model_builder

DEMO_CONFIG = 'configs/demo/kmax_demo.textproto'


@pytest.fixture(scope='module')
def demo_config_path(repo_root) -> str:
  return str(repo_root / DEMO_CONFIG)


@pytest.fixture(scope='module')
def demo_config(demo_config_path):
  return loader.load_config(demo_config_path)


def test_demo_config_fields(demo_config):
  train, evaluation = demo_config.train_dataset_options, demo_config.eval_dataset_options
  assert train.dataset == evaluation.dataset == 'kmax_demo_panoptic'
  # Relative to the repository root, where the README runs the trainer.
  assert list(train.file_pattern) == ['demo_data/train-*.tfrecord']
  assert list(evaluation.file_pattern) == ['demo_data/val-*.tfrecord']
  assert list(train.crop_size) == list(evaluation.crop_size) == [129, 129]
  assert evaluation.batch_size == 1
  assert demo_config.evaluator_options.eval_steps == -1  # All val images.
  assert demo_config.evaluator_options.transformer_post_processing == 'maskwise'
  trainer = demo_config.trainer_options
  assert trainer.solver_options.optimizer == 'adamw'
  steps = trainer.solver_options.training_number_of_steps
  assert 0 < trainer.steps_per_loop <= trainer.save_checkpoints_steps < steps
  assert steps % trainer.steps_per_loop == 0
  backbone = demo_config.model_options.backbone
  assert backbone.name == 'kmax_resnet50' and backbone.backbone_width_multiplier < 1.0


def test_demo_model_is_small(demo_config):
  model = model_builder.build_model(demo_config)
  # ResNet-50 has ~23.5M encoder weights; the scaled demo encoder must be far smaller,
  # which also checks that the backbone multipliers reach the encoder.
  assert dict(model.checkpoint_items)['encoder'].count_params() < 1_000_000
  assert model.count_params() < 10_000_000
  num_layers = list(demo_config.model_options.max_deeplab.transformer_decoder_num_layers)
  assert model.auxiliary_output_number == sum(num_layers)
  outputs = model(tf.zeros([1, 129, 129, 3]), training=False, post_processing=False)
  # 32 mask slots (descriptor) at output stride 4: 33 x 33 for a 129 crop; 7 classes.
  assert outputs[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY].shape == (1, 33, 33, 32)
  assert outputs[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY].shape == (1, 32, 7)


def test_demo_one_training_step(demo_config_path, tmp_path):
  from kmax_tf.data import demo_dataset
  from kmax_tf.training import train_lib

  data_dir = tmp_path / 'demo_data'
  demo_dataset.generate(str(data_dir), num_train=2, num_val=1, coco_format_splits=(),
                        num_workers=1, progress=False)
  config = loader.load_config(demo_config_path, overrides=[
      f'train_dataset_options.file_pattern={data_dir}/train-*.tfrecord',
      'train_dataset_options.batch_size=2',
      'trainer_options.solver_options.training_number_of_steps=1',
      'trainer_options.solver_options.warmup_steps=0',
      'trainer_options.steps_per_loop=1',
  ])
  model_dir = tmp_path / 'run'
  train_lib.run_experiment('train', config, str(model_dir), checkpoint_input_iterator=False)

  before = tf.train.load_checkpoint(str(model_dir / 'ckpt-0'))
  after = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(model_dir)))
  assert after.get_tensor('global_step/.ATTRIBUTES/VARIABLE_VALUE') == 1
  changed = 0
  for name, shape in tf.train.list_variables(str(model_dir / 'ckpt-0')):
    if not shape or 'optimizer' in name or not name.endswith('VARIABLE_VALUE'):
      continue
    new = after.get_tensor(name)
    if new.dtype == np.float32:
      assert np.all(np.isfinite(new)), name
      changed += int(not np.array_equal(before.get_tensor(name), new))
  assert changed > 50  # The update reached the encoder, decoders and heads.


def test_backbone_multipliers_only_for_resnet_encoders(demo_config_path):
  config = loader.load_config(demo_config_path, overrides=[
      'model_options.backbone.name=kmax_convnext_tiny'])
  with pytest.raises(ValueError, match='backbone_layer_multiplier.*kmax_convnext_tiny'):
    model_builder.build_model(config)
