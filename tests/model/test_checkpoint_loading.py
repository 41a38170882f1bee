"""Tests for kmax_tf.model.checkpoint_loading.

Checkpoints are written in DeepLab2's format with tests/helpers/dl2_checkpoint.py
(a graph of plain nodes named like the keys), with a real Keras optimizer (slot
variables, as DeepLab2's trainer writes them) or with Keras `save_weights` (how
ConvNeXt `pretrained_weights` files are written). The models are a small
ConvNeXt plus stand-in heads, except where real manifest keys are needed.
"""

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf.keras_setup import keras
from kmax_tf.model import checkpoint_loading
from kmax_tf.model.pixel_encoder import convnext
from tests.helpers import dl2_checkpoint


def _mini_items(seed):
  """A small multi-item 'model': a 4-stage ConvNeXt and two stand-in heads."""
  tf.random.set_seed(seed)
  encoder = convnext.ConvNeXtEncoder((1, 1, 2, 1), (8, 16, 24, 32), drop_path_keep_prob=0.9,
                                     name='mini_convnext')
  encoder(keras.Input((17, 17, 3)))
  pixel_decoder = keras.layers.Dense(5, bias_initializer='glorot_uniform')
  pixel_decoder.build((None, 32))
  semantic_last_layer = keras.layers.Conv2D(7, 1, bias_initializer='glorot_uniform')
  semantic_last_layer.build((None, 4, 4, 5))
  return {'encoder': encoder, 'pixel_decoder': pixel_decoder,
          'semantic_last_layer': semantic_last_layer}


def _values(items, prefix=''):
  """{key: numpy value} of a model, keyed like its checkpoint."""
  variables = checkpoint_loading.object_graph_variables(tf.train.Checkpoint(**items))
  return {prefix + k: v.numpy() for k, v in variables.items()}


def _rule_values(items, salt='test-salt'):
  variables = checkpoint_loading.object_graph_variables(tf.train.Checkpoint(**items))
  return {k: dl2_checkpoint.rule_value(k, tuple(v.shape.as_list()), salt).astype(np.float32)
          for k, v in variables.items()}


def _assert_model_values(items, expected, only_prefix=''):
  actual = _values(items)
  checked = 0
  for key, value in actual.items():
    if key.startswith(only_prefix):
      np.testing.assert_array_equal(value, expected[key], err_msg=key)
      checked += 1
  assert checked > 0


@pytest.fixture(scope='module')
def convnext_tiny():
  encoder = convnext.build_convnext_encoder('tiny', input_shape=(33, 33, 3))
  yield encoder
  keras.backend.clear_session()


def test_object_graph_keys_equal_written_checkpoint(tmp_path, convnext_tiny):
  items = _mini_items(0)
  # A second, shorter path to a block: TensorFlow names its variables after that one.
  items['block_alias'] = items['encoder'].stages[0].layers[0]
  keys = {}
  for name, root_items in [('mini', items), ('tiny', {'encoder': convnext_tiny})]:
    path = tf.train.Checkpoint(**root_items).write(str(tmp_path / name / 'ckpt'))
    expected = checkpoint_loading.object_graph_variables(tf.train.Checkpoint(**root_items))
    keys[name] = {k: tuple(v.shape.as_list()) for k, v in expected.items()}
    assert keys[name] == dl2_checkpoint.checkpoint_keys(path)
  assert 'block_alias/layer_scale' in keys['mini']
  assert 'encoder/stages/0/layer_with_weights-0/layer_scale' not in keys['mini']
  assert keys['tiny']['encoder/stages/0/layer_with_weights-0/layer_scale'] == (1, 1, 1, 96)


def test_full_round_trip_ignores_training_state(tmp_path):
  items = _mini_items(0)
  values = _rule_values(items)
  extra = {'global_step': np.array(1234, np.int64),
           'optimizer/iter': np.array(1234, np.int64),
           'optimizer/learning_rate': np.array(1e-4, np.float32),
           'backbone_optimizer/iter': np.array(1234, np.int64)}
  prefix = dl2_checkpoint.write_checkpoint({**values, **extra}, tmp_path / 'ckpt-1234')

  summary = checkpoint_loading.load_deeplab2_checkpoint(items, prefix)
  _assert_model_values(items, values)
  assert summary.kind == 'full' and summary.layout == 'root items'
  assert summary.restored_items == ('encoder', 'pixel_decoder', 'semantic_last_layer')
  assert summary.num_variables == len(values)
  assert summary.num_parameters == sum(v.size for v in values.values())
  assert summary.num_ignored_keys == len(extra)
  # A directory with one checkpoint and its `.index` file resolve to the same prefix.
  assert checkpoint_loading.load_deeplab2_checkpoint(items, tmp_path).checkpoint_path == prefix
  assert checkpoint_loading.load_deeplab2_checkpoint(
      items, prefix + '.index', kind='deeplab2').checkpoint_path == prefix


def test_full_round_trip_with_keras_optimizer_slots(tmp_path):
  source = _mini_items(1)
  # Legacy Keras optimizers write slots next to each variable
  # (`<var>/.OPTIMIZER_SLOT/optimizer/m`), the newer ones under `optimizer/`.
  optimizer = keras.optimizers.legacy.Adam(1e-3)
  variables = [v for item in source.values() for v in item.trainable_variables]
  optimizer.apply_gradients([(tf.ones_like(v), v) for v in variables])
  backbone_optimizer = keras.optimizers.Adam(1e-4)
  encoder_variables = source['encoder'].trainable_variables
  backbone_optimizer.apply_gradients([(tf.ones_like(v), v) for v in encoder_variables])
  global_step = tf.Variable(7, dtype=tf.int64)
  manager = tf.train.CheckpointManager(
      tf.train.Checkpoint(global_step=global_step, optimizer=optimizer,
                          backbone_optimizer=backbone_optimizer, **source),
      str(tmp_path), max_to_keep=2)
  manager.save(checkpoint_number=7)
  source_values = _values(source)
  assert any('.OPTIMIZER_SLOT' in name for name, _ in tf.train.list_variables(str(tmp_path)))

  target = _mini_items(2)
  summary = checkpoint_loading.load_deeplab2_checkpoint(target, tmp_path)  # Directory: latest.
  _assert_model_values(target, source_values)
  assert summary.checkpoint_path.endswith('ckpt-7') and summary.kind == 'full'


def test_backbone_checkpoint_encoder_layout(tmp_path):
  items = _mini_items(0)
  before = _values(items)
  encoder_values = {k: v for k, v in _rule_values(items).items() if k.startswith('encoder/')}
  extra = {'head/dense/kernel': np.ones((32, 1000), np.float32),
           'global_step': np.array(5, np.int64)}
  prefix = dl2_checkpoint.write_checkpoint({**encoder_values, **extra}, tmp_path / 'ckpt')

  summary = checkpoint_loading.load_deeplab2_checkpoint(items, prefix)
  assert (summary.kind, summary.layout, summary.restored_items) == (
      'backbone', 'encoder/', ('encoder',))
  assert summary.num_variables == len(encoder_values)
  _assert_model_values(items, encoder_values, only_prefix='encoder/')
  _assert_model_values(items, before, only_prefix='pixel_decoder/')  # Untouched.


def test_backbone_checkpoint_model_garden_layout(tmp_path):
  items = _mini_items(0)
  encoder_values = {k: v for k, v in _rule_values(items).items() if k.startswith('encoder/')}
  garden = {'backbone/_encoder/' + k[len('encoder/'):]: v for k, v in encoder_values.items()}
  garden['head/_classifier/kernel'] = np.ones((32, 10), np.float32)
  prefix = dl2_checkpoint.write_checkpoint(garden, tmp_path / 'ckpt')
  assert set(dl2_checkpoint.checkpoint_keys(prefix)) == set(garden)

  summary = checkpoint_loading.load_deeplab2_checkpoint(items, prefix, kind='backbone')
  assert (summary.kind, summary.layout) == ('backbone', 'backbone/_encoder/')
  assert summary.num_variables == len(encoder_values) and summary.num_ignored_keys == 1
  _assert_model_values(items, encoder_values, only_prefix='encoder/')


def test_convnext_pretrained_weights_from_keras_save_weights(tmp_path, convnext_tiny):
  weights_path = str(tmp_path / 'convnext_tiny_imagenet')
  convnext_tiny.save_weights(weights_path)  # Keras TF format: keys rooted at the encoder.
  assert any(name.startswith('downsample_layers/')
             for name, _ in tf.train.list_variables(weights_path))

  encoder = convnext.build_convnext_encoder(
      'convnext_tiny', input_shape=(65, 65, 3), pretrained_weights_path=weights_path)
  for got, want in zip(encoder.weights, convnext_tiny.weights):
    np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=got.name)
  summary = checkpoint_loading.load_deeplab2_checkpoint({'encoder': encoder}, weights_path)
  assert (summary.kind, summary.layout, summary.num_variables) == (
      'pretrained_weights', 'encoder root', 178)


def test_other_architecture_raises_and_restores_nothing(tmp_path, dl2_reference, convnext_tiny):
  r50_rows = [r for r in dl2_checkpoint.read_manifest(dl2_reference / 'manifests' / 'coco_r50.tsv')
              if r[0].startswith('encoder/')]
  values = {k: np.zeros(s, np.float32) for k, s, _ in r50_rows}
  prefix = dl2_checkpoint.write_checkpoint(values, tmp_path / 'r50')
  before = [w.numpy() for w in convnext_tiny.weights]

  with pytest.raises(ValueError) as error:
    checkpoint_loading.load_deeplab2_checkpoint({'encoder': convnext_tiny}, prefix)
  message = str(error.value)
  assert prefix in message and 'No key in common' in message
  assert f'178 missing, {len(r50_rows)} unexpected, 0 shape-mismatched' in message
  assert 'encoder/downsample_layers/0/layer_with_weights-0/kernel [4, 4, 3, 96]' in message
  assert 'encoder/_stage2/_block1/_conv1_bn_act/_batch_norm/beta [64]' in message
  assert message.count('\n  encoder/') == 40  # First 20 of each list.
  for got, want in zip(convnext_tiny.weights, before):
    np.testing.assert_array_equal(got.numpy(), want)


def test_partial_and_shape_mismatched_checkpoints_raise(tmp_path):
  items = _mini_items(0)
  values = _rule_values(items)
  keys = sorted(values)
  dropped = keys[:2]
  reshaped = 'pixel_decoder/kernel'
  bad = {k: v for k, v in values.items() if k not in dropped}
  bad['encoder/stages/0/extra_block/kernel'] = np.zeros((3, 3), np.float32)
  bad[reshaped] = np.zeros((32, 6), np.float32)  # Another head width.
  prefix = dl2_checkpoint.write_checkpoint(bad, tmp_path / 'bad')
  before = _values(items)

  with pytest.raises(ValueError, match='2 missing, 1 unexpected, 1 shape-mismatched') as error:
    checkpoint_loading.load_deeplab2_checkpoint(items, prefix)
  assert f'{reshaped}: [32, 6] vs [32, 5]' in str(error.value)
  assert all(k in str(error.value) for k in dropped)
  with pytest.raises(ValueError, match='shape-mismatched'):
    checkpoint_loading.load_deeplab2_checkpoint(items, prefix, strict=False)
  _assert_model_values(items, before)

  # Without the shape mismatch, strict=False restores what matches and reports the rest.
  del bad[reshaped]
  prefix = dl2_checkpoint.write_checkpoint(bad, tmp_path / 'partial')
  with pytest.raises(ValueError, match='3 missing, 1 unexpected, 0 shape-mismatched'):
    checkpoint_loading.load_deeplab2_checkpoint(items, prefix)
  summary = checkpoint_loading.load_deeplab2_checkpoint(items, prefix, strict=False)
  assert set(summary.missing_keys) == set(dropped) | {reshaped}
  assert summary.unexpected_keys == ('encoder/stages/0/extra_block/kernel',)
  restored = {k: v for k, v in values.items() if k in bad}
  _assert_model_values({k: v for k, v in items.items() if k == 'encoder'},
                       {**before, **restored}, only_prefix='encoder/')


def test_skip_semantic_last_layer_for_another_class_count(tmp_path):
  items = _mini_items(0)
  values = _rule_values(items)
  values['semantic_last_layer/kernel'] = np.zeros((1, 1, 5, 9), np.float32)  # 9 classes.
  values['semantic_last_layer/bias'] = np.zeros((9,), np.float32)
  prefix = dl2_checkpoint.write_checkpoint(values, tmp_path / 'ckpt')
  before = _values(items)

  with pytest.raises(ValueError, match='semantic_last_layer/kernel: \\[1, 1, 5, 9\\] vs'):
    checkpoint_loading.load_deeplab2_checkpoint(items, prefix)
  summary = checkpoint_loading.load_deeplab2_checkpoint(items, prefix,
                                                        skip_semantic_last_layer=True)
  assert summary.skipped_items == ('semantic_last_layer',)
  assert summary.restored_items == ('encoder', 'pixel_decoder')
  _assert_model_values(items, values, only_prefix='encoder/')
  _assert_model_values(items, before, only_prefix='semantic_last_layer/')
  with pytest.raises(ValueError, match='only to kind="full"'):
    checkpoint_loading.load_deeplab2_checkpoint(items, prefix, kind='backbone',
                                                skip_semantic_last_layer=True)


def test_bad_paths_and_arguments(tmp_path):
  items = _mini_items(0)
  missing = tmp_path / 'no_such_ckpt'
  with pytest.raises(ValueError, match=f'Checkpoint {missing} does not exist'):
    checkpoint_loading.load_deeplab2_checkpoint(items, missing)
  text_file = tmp_path / 'notes.txt'
  text_file.write_text('not a checkpoint\n')
  with pytest.raises(ValueError, match=f'{text_file} is not a readable TensorFlow checkpoint'):
    checkpoint_loading.load_deeplab2_checkpoint(items, text_file)
  h5_file = tmp_path / 'convnext_tiny.h5'
  h5_file.write_bytes(b'\x89HDF\r\n\x1a\n')
  with pytest.raises(ValueError, match='HDF5 / .keras weight files are not supported'):
    checkpoint_loading.load_deeplab2_checkpoint(items, h5_file)
  empty_dir = tmp_path / 'empty'
  empty_dir.mkdir()
  with pytest.raises(ValueError, match=f'Checkpoint directory {empty_dir} has no'):
    checkpoint_loading.load_deeplab2_checkpoint(items, empty_dir)
  with pytest.raises(ValueError, match='kind must be one of'):
    checkpoint_loading.load_deeplab2_checkpoint(items, text_file, kind='weights')
  with pytest.raises(TypeError, match='checkpoint_items'):
    checkpoint_loading.load_deeplab2_checkpoint(object(), text_file)

  values = {k: v for k, v in _rule_values(items).items() if k.startswith('encoder/')}
  prefix = dl2_checkpoint.write_checkpoint(values, tmp_path / 'enc')
  unbuilt = convnext.ConvNeXtEncoder((1, 1, 2, 1), (8, 16, 24, 32))
  with pytest.raises(ValueError, match='no variables yet'):
    checkpoint_loading.load_deeplab2_checkpoint({'encoder': unbuilt}, prefix)
  with pytest.raises(ValueError, match="no 'encoder' checkpoint item"):
    checkpoint_loading.load_deeplab2_checkpoint(
        {'pixel_decoder': items['pixel_decoder']}, prefix, kind='backbone')


def test_real_model_round_trip_from_manifest(tmp_path, repo_root, dl2_reference):
  """COCO ConvNeXt-T: a DeepLab2 training checkpoint (manifest + rule + state) restores."""
  from kmax_tf.model import builder  # (the full model is only needed here)
  from tests.model import test_manifests

  keras.backend.clear_session()
  config = test_manifests.load_small_crop_config(repo_root, 'coco/kmax_meta_convnext_tiny_os32')
  model = builder.build_model(config)
  manifest = dl2_checkpoint.read_manifest(dl2_reference / 'manifests' / 'coco_convnext_tiny.tsv')
  values = dl2_checkpoint.manifest_values(manifest)
  state = {'global_step': np.array(150000, np.int64),
           'optimizer/iter': np.array(150000, np.int64),
           'backbone_optimizer/iter': np.array(150000, np.int64)}
  prefix = dl2_checkpoint.write_checkpoint({**values, **state}, tmp_path / 'ckpt-150000')

  summary = checkpoint_loading.load_deeplab2_checkpoint(model, tmp_path)
  assert (summary.kind, summary.num_variables, summary.num_ignored_keys) == (
      'full', len(manifest), len(state))
  assert summary.num_parameters == 67_265_502 + 164_910
  assert summary.checkpoint_path == prefix
  restored = test_manifests.model_variables(model)
  for key in ('encoder/stages/2/layer_with_weights-8/layer_scale',
              'transformer_decoder/cluster_centers',
              'semantic_last_layer/kernel',
              'pixel_space_mask_batch_norm/moving_variance'):
    np.testing.assert_array_equal(restored[key].numpy(), values[key], err_msg=key)
  assert sum(np.array_equal(v.numpy(), values[k]) for k, v in restored.items()) == len(manifest)
  del model, restored
  keras.backend.clear_session()
