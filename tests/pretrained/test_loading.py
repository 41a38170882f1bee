"""Released models by name, end to end: Predictor, build_model + load_pretrained, the trainer,
predict and export CLIs, all downloading from the loopback server."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import kmax_tf
from kmax_tf import pretrained
from kmax_tf.model import checkpoint_loading
from kmax_tf.training import checkpointing
from tests.pretrained import conftest
from tests.pretrained.conftest import TINY

REPO = pathlib.Path(__file__).resolve().parents[2]


def _values(model) -> dict:
  variables = checkpoint_loading.object_graph_variables(
      tf.train.Checkpoint(**model.checkpoint_items))
  return {key: variable.numpy() for key, variable in variables.items()}


def _image(seed=0, size=(90, 120)):
  rng = np.random.default_rng(seed)
  blocks = rng.integers(0, 255, (size[0] // 10 + 1, size[1] // 10 + 1, 3))
  return np.kron(blocks, np.ones((10, 10, 1)))[:size[0], :size[1]].astype(np.uint8)


def test_predictor_from_pretrained_end_to_end(cache, server, archives):
  predictor = kmax_tf.Predictor.from_pretrained(TINY)
  assert server.requests == [(f'/{conftest.TINY_STEM}.tar.gz', None)]
  restored = _values(predictor._module.model)
  assert set(restored) == set(archives.values)
  for key, value in archives.values.items():
    np.testing.assert_array_equal(restored[key], value, err_msg=key)
  # The same maps as the checkpoint before it was packed, served and downloaded.
  reference = kmax_tf.Predictor.from_checkpoint(conftest.tiny_pretrained_config(),
                                                archives.original_prefix)
  image = _image()
  got, expected = predictor(image), reference(image)
  np.testing.assert_array_equal(got.panoptic, expected.panoptic)
  assert len(got.segments) > 0 and got.panoptic.shape == image.shape[:2]
  assert predictor.source.startswith(f'pretrained:{TINY} (')


def test_build_model_and_load_pretrained(cache, server, archives):
  config = pretrained.load_config(TINY)
  assert config.model_options.initial_checkpoint == f'pretrained:{TINY}'
  assert not config.model_options.backbone.HasField('pretrained_weights')
  model = kmax_tf.build_model(config)
  summary = kmax_tf.load_pretrained(model, TINY, progress=False)
  assert (summary.kind, summary.num_variables) == ('full', len(archives.values))
  assert summary.num_ignored_keys == len(conftest.TRAINING_STATE)
  restored = _values(model)
  for key in ('encoder/_stem/_conv/kernel', 'transformer_decoder/cluster_centers',
              'semantic_last_layer/kernel'):
    np.testing.assert_array_equal(restored[key], archives.values[key], err_msg=key)
  # `pretrained:NAME` is a checkpoint path for load_deeplab2_checkpoint too.
  assert kmax_tf.load_deeplab2_checkpoint(
      model, f'pretrained:{TINY}').checkpoint_path == summary.checkpoint_path
  with pytest.raises(pretrained.PretrainedError, match="'resnet50_imagenet1k' is an ImageNet "
                     'backbone checkpoint, not a panoptic model'):
    kmax_tf.Predictor.from_pretrained('resnet50_imagenet1k')


def _fresh_model(config):
  tf.keras.backend.clear_session()
  model = kmax_tf.build_model(config)
  return model, _values(model)


def test_initial_checkpoint_pretrained_name_in_the_trainer(cache, server, archives):
  """What train_lib runs for `initial_checkpoint: "pretrained:NAME"`."""
  config = conftest.tiny_pretrained_config()
  config.model_options.initial_checkpoint = f'pretrained:{TINY}'
  model, _ = _fresh_model(config)
  init_fn = checkpointing.make_initial_checkpoint_fn(
      config.model_options.initial_checkpoint, model, model.checkpoint_items,
      config.model_options)
  assert server.requests == []  # Nothing is downloaded before the trainer needs it.
  init_fn()
  restored = _values(model)
  for key, value in archives.values.items():
    np.testing.assert_array_equal(restored[key], value, err_msg=key)


def test_fine_tuning_to_another_class_count(cache, server, archives):
  """A checkpoint with 2 more classes: restored without its class-dependent layers."""
  config = conftest.tiny_pretrained_config()
  reference = 'pretrained:kmax_tiny_nine'
  model, before = _fresh_model(config)
  strict = checkpointing.make_initial_checkpoint_fn(reference, model, model.checkpoint_items,
                                                    config.model_options)
  with pytest.raises(ValueError, match='shape-mismatched'):
    strict()
  config.model_options.restore_semantic_last_layer_from_initial_checkpoint = False
  checkpointing.make_initial_checkpoint_fn(reference, model, model.checkpoint_items,
                                           config.model_options)()
  restored = _values(model)
  for key, value in restored.items():
    expected = before if key.startswith(conftest.CLASS_DEPENDENT) else archives.values
    np.testing.assert_array_equal(value, expected[key], err_msg=key)


def _env(cache_dir):
  return dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL='2',
              KMAX_TF_HOME=str(cache_dir))


def _run(args, env):
  return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_predict_and_export_command_lines(cache, server, archives, tmp_path):
  env = _env(cache)
  image_path = tmp_path / 'photo.png'
  image = _image(seed=1)
  Image.fromarray(image).save(image_path)
  predicted = _run(['-m', 'kmax_tf.predict', f'--pretrained={TINY}', f'--images={image_path}',
                    f'--output_dir={tmp_path / "out"}'], env)
  assert predicted.returncode == 0, predicted.stderr[-3000:]
  assert '1 of 1 images written' in predicted.stdout
  assert f'kmax_tf: downloading {TINY} from {server.url}' in predicted.stderr
  segments = json.loads((tmp_path / 'out' / 'segments' / 'photo.json').read_text())
  expected = kmax_tf.Predictor.from_checkpoint(conftest.tiny_pretrained_config(),
                                               archives.original_prefix)(image)
  assert [s['panoptic_label'] for s in segments['segments_info']] == [
      s.id for s in expected.segments]

  exported = _run(['export_model.py', f'--pretrained={TINY}',
                   f'--output_path={tmp_path / "models"}'], env)
  assert exported.returncode == 0, exported.stderr[-3000:]
  assert 'downloading' not in exported.stderr  # The cache from the predict run.
  assert len(server.requests) == 1
  metadata = json.loads((tmp_path / 'models' / '1' / 'assets' / 'kmax_metadata.json').read_text())
  assert metadata['checkpoint_path'] == str(
      cache / 'models' / TINY / conftest.TINY_CHECKPOINT)

  conflict = _run(['export_model.py', f'--pretrained={TINY}', '--checkpoint_path=/x',
                   f'--output_path={tmp_path / "models"}'], env)
  assert conflict.returncode == 2
  assert 'give --pretrained or --checkpoint_path, not both' in conflict.stderr
  unknown = _run(['-m', 'kmax_tf.predict', '--pretrained=kmax_nope', f'--images={image_path}',
                  f'--output_dir={tmp_path / "out2"}'], env)
  assert unknown.returncode == 2 and "Unknown pretrained model 'kmax_nope'" in unknown.stderr


@pytest.mark.slow
def test_train_py_starts_from_a_pretrained_name(cache, server, archives, tmp_path):
  """trainer/train.py with `initial_checkpoint: "pretrained:NAME"`: one step at learning rate 0."""
  env = _env(cache)
  data = tmp_path / 'data'
  made = _run(['-m', 'kmax_tf.data.demo_dataset', f'--output_dir={data}', '--num_train=2',
               '--num_val=1', '--size=65,65'], env)
  assert made.returncode == 0, made.stderr[-2000:]
  overrides = list(conftest.OVERRIDES) + [
      f'model_options.initial_checkpoint=pretrained:{TINY}',
      f'train_dataset_options.file_pattern={data}/train-*.tfrecord',
      'train_dataset_options.batch_size=1', 'train_dataset_options.crop_size=65,65',
      'train_dataset_options.min_resize_value=65,65',
      'train_dataset_options.max_resize_value=65,65',
      'train_dataset_options.augmentations.autoaugment_policy_name=',
      'train_dataset_options.augmentations.panoptic_copy_paste.panoptic_copy_paste_scale=0',
      'model_options.max_deeplab.instance_discrimination_sample_k=64',
      'model_options.max_deeplab.semantic_sample_k=64',
      'trainer_options.solver_options.base_learning_rate=0',
      'trainer_options.solver_options.warmup_steps=0',
      'trainer_options.solver_options.training_number_of_steps=1',
      'trainer_options.save_checkpoints_steps=1', 'trainer_options.steps_per_loop=1',
      'trainer_options.save_summaries_steps=1']
  trained = _run(['trainer/train.py', f'--config_file={conftest.tiny_config.BASE_CONFIG}',
                  f'--model_dir={tmp_path / "run"}', '--mode=train',
                  '--substitution=EXPERIMENT_NAME=tiny']
                 + [f'--config_override={override}' for override in overrides], env)
  assert trained.returncode == 0, trained.stderr[-4000:]
  assert server.requests == [(f'/{conftest.TINY_STEM}.tar.gz', None)]
  reader = tf.train.load_checkpoint(str(tmp_path / 'run' / 'tiny' / 'ckpt-1'))
  for key in ('encoder/_stem/_conv/kernel', 'transformer_decoder/cluster_centers'):
    np.testing.assert_array_equal(reader.get_tensor(key + '/.ATTRIBUTES/VARIABLE_VALUE'),
                                  archives.values[key], err_msg=key)


def test_imagenet_backbone_by_name_as_pretrained_weights(cache, server, archives, tmp_path,
                                                         monkeypatch):
  """A ConvNeXt `pretrained_weights` file (Keras save_weights, rooted at the encoder) by name."""
  from kmax_tf.keras_setup import keras
  from kmax_tf.model.pixel_encoder import convnext

  def mini_encoder(seed):
    tf.random.set_seed(seed)
    encoder = convnext.ConvNeXtEncoder((1, 1, 2, 1), (8, 16, 24, 32), name='mini_convnext')
    encoder(keras.Input((17, 17, 3)))
    return encoder

  source = mini_encoder(0)
  written = tmp_path / 'written' / 'mini_imagenet' / 'ckpt-0'
  source.save_weights(str(written))
  conftest._pack(archives.folder / 'mini_imagenet.tar.gz', str(written), 'mini_imagenet/ckpt-0')
  extra = tmp_path / 'extra.json'
  extra.write_text(json.dumps({'format': 'kmax_tf.pretrained_registry.v1', 'models': [dict(
      name='mini_convnext_imagenet', kind='imagenet', restore='pretrained_weights',
      url=f'{server.url}/mini_imagenet.tar.gz', config=str(conftest.tiny_config.BASE_CONFIG),
      checkpoint='mini_imagenet/ckpt-0')]}))
  monkeypatch.setenv('KMAX_TF_REGISTRY', os.environ['KMAX_TF_REGISTRY'] + os.pathsep + str(extra))
  target = mini_encoder(1)
  summary = kmax_tf.load_pretrained({'encoder': target}, 'mini_convnext_imagenet', progress=False)
  assert (summary.kind, summary.layout) == ('pretrained_weights', 'encoder root')
  for got, expected in zip(target.weights, source.weights):
    np.testing.assert_array_equal(got.numpy(), expected.numpy(), err_msg=got.name)
  # As `backbone.pretrained_weights: "pretrained:NAME"` reaches the encoder builder.
  again = mini_encoder(2)
  checkpoint_loading.load_deeplab2_checkpoint(
      {'encoder': again}, 'pretrained:mini_convnext_imagenet', kind='pretrained_weights')
  np.testing.assert_array_equal(again.weights[0].numpy(), source.weights[0].numpy())
  config = pretrained.load_config('mini_convnext_imagenet')
  assert config.model_options.backbone.pretrained_weights == 'pretrained:mini_convnext_imagenet'
