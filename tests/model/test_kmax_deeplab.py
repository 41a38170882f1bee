"""Parity of the full kMaX-DeepLab model with DeepLab2, plus builder behaviour.

The forward references (../shared/dl2_reference/forward) were computed by
DeepLab2 with the README's weight rule and calibrated moving statistics; the
model restores that checkpoint through `checkpoint_items` and must reproduce
every output, intermediate and k-means assignment.
"""

import json

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format

from kmax_tf import common
from kmax_tf.data import dataset_descriptors
from kmax_tf.keras_setup import keras
from kmax_tf.model import builder
from kmax_tf.model import checkpoint_contract
from kmax_tf.model import kmax_deeplab
from kmax_tf.protos import config_pb2
from tests.helpers import dl2_checkpoint

RAW_KEYS = (common.PRED_SEMANTIC_LOGITS_KEY, common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY,
            common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY, common.PRED_TRANSFORMER_CLASS_LOGITS_KEY)
MAP_KEYS = (common.PRED_PANOPTIC_KEY, common.PRED_SEMANTIC_KEY)
RAW_TOLERANCE = 1e-4       # max |out - ref| / max |ref|
MAP_AGREEMENT = 0.995      # fraction of equal pixels
# (forward reference, manifest, trainable parameters in the README table)
REFERENCES = {
    'coco': ('coco_r50_129x129', 'coco_r50', 72_436_862),
    'cityscapes': ('cityscapes_r50_129x257', 'cityscapes_r50', 56_986_125),
}


def load_reference_config(dl2_reference, name) -> config_pb2.ExperimentOptions:
  info = json.loads((dl2_reference / 'forward' / f'{name}.json').read_text())
  return text_format.Parse(info['config_textproto'], config_pb2.ExperimentOptions())


def restore_reference_weights(items, dl2_reference, name, manifest_name):
  """Restores manifest + rule + moving statistics strictly into `items`; returns the manifest."""
  return dl2_checkpoint.restore_reference(
      items, dl2_reference / 'manifests' / f'{manifest_name}.tsv',
      dl2_reference / 'forward' / f'{name}_moving_stats.npz')


def relative_error(actual, expected) -> float:
  return float(np.abs(np.asarray(actual) - expected).max() / np.abs(expected).max())


class _Case:

  def __init__(self, dl2_reference, key, eager_build):
    name, self.manifest_name, self.trainable = REFERENCES[key]
    self.config = load_reference_config(dl2_reference, name)
    self.data = np.load(dl2_reference / 'forward' / f'{name}.npz')
    if eager_build:
      self.model = builder.build_model(self.config, build=False)
      crop = list(self.config.train_dataset_options.crop_size)
      self.model(tf.zeros([1] + crop + [3]), training=False, post_processing=False)
    else:
      self.model = builder.build_model(self.config)
    self.manifest = restore_reference_weights(
        self.model.checkpoint_items, dl2_reference, name, self.manifest_name)
    self.outputs = self.model(tf.constant(self.data['input_image']), training=False,
                              return_intermediates=True)


@pytest.fixture(scope='module')
def coco(dl2_reference):
  return _Case(dl2_reference, 'coco', eager_build=True)


@pytest.fixture(scope='module')
def cityscapes(dl2_reference):
  # Built like DeepLab2 (symbolic call on the train crop).
  return _Case(dl2_reference, 'cityscapes', eager_build=False)


@pytest.fixture(params=['coco', 'cityscapes'])
def case(request):
  return request.getfixturevalue(request.param)


def test_checkpoint_keys_and_parameter_count_match_deeplab2(case):
  keys = checkpoint_contract.checkpoint_variable_keys(case.model.checkpoint_items)
  assert keys == {key: shape for key, shape, _ in case.manifest}
  trainable = sum(int(np.prod(v.shape)) for v in case.model.trainable_variables)
  assert trainable == case.trainable


def test_raw_outputs_and_maps_match_deeplab2(case):
  for key in RAW_KEYS:
    assert case.outputs[key].dtype == tf.float32
    assert relative_error(case.outputs[key], case.data[key]) <= RAW_TOLERANCE, key
  for key in MAP_KEYS:
    agreement = np.mean(case.outputs[key].numpy() == case.data[key])
    assert agreement >= MAP_AGREEMENT, (key, agreement)
  # Segment ids are not degenerate (several real segments to agree on).
  assert len(np.unique(case.data[common.PRED_PANOPTIC_KEY])) >= 4
  for key in (common.PRED_INSTANCE_SCORES_KEY, common.PRED_SEMANTIC_SCORES_KEY):
    assert np.abs(case.outputs[key].numpy() - case.data[key]).max() <= 1e-3, key


def test_kmeans_assignments_and_intermediates_match_deeplab2(case):
  intermediates = case.outputs[kmax_deeplab.INTERMEDIATES_KEY]
  auxiliary = intermediates[common.PRED_AUXILIARY_OUTPUTS]
  assert len(auxiliary) == 6
  for layer in range(6):
    prefix = f'transformer_decoder/aux_layer{layer}/'
    assignment = np.argmax(auxiliary[layer][common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY], axis=-1)
    flips = int(np.sum(assignment != case.data[prefix + 'kmeans_assignment']))
    assert flips == 0, f'layer {layer}: {flips} k-means flips'
    for key in (common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY,
                common.PRED_TRANSFORMER_CLASS_LOGITS_KEY,
                common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY):
      assert relative_error(auxiliary[layer][key], case.data[prefix + key]) <= RAW_TOLERANCE
    centers = intermediates[f'cluster_centers_after_layer{layer}']
    reference = case.data[f'transformer_decoder/cluster_centers_after_layer{layer}']
    assert relative_error(centers, reference) <= RAW_TOLERANCE
  for key in case.data.files:
    area, _, name = key.partition('/')
    if area in ('encoder', 'pixel_decoder') or (
        area == 'transformer_decoder' and name.startswith('transformer_')):
      assert relative_error(intermediates[name], case.data[key]) <= RAW_TOLERANCE, key


def test_training_outputs_auxiliary_predictions(coco):
  images = tf.constant(coco.data['input_image'])
  outputs = coco.model(images, training=True)
  auxiliary = outputs[common.PRED_AUXILIARY_OUTPUTS]
  assert isinstance(auxiliary, tuple) and len(auxiliary) == coco.model.auxiliary_output_number
  mask_shape = outputs[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY].shape
  for item in auxiliary:
    assert item[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY].shape == mask_shape
    assert item[common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY].shape[:3] == mask_shape[:3]
    assert item[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY].shape == (1, 128, 134)
  assert common.PRED_PANOPTIC_KEY not in outputs


def test_bad_input_shape_is_a_clear_error(coco):
  with pytest.raises(ValueError, match=r'\[batch, height, width, 3\]'):
    coco.model(tf.zeros([1, 129, 129, 4]))


@pytest.mark.slow
def test_eager_function_and_xla_agree(coco):
  images = tf.constant(coco.data['input_image'])
  eager = coco.model(images, training=False)
  for jit_compile in (False, True):
    compiled = tf.function(lambda x: coco.model(x, training=False), jit_compile=jit_compile)
    outputs = compiled(images)
    for key in RAW_KEYS:
      assert relative_error(outputs[key], eager[key].numpy()) <= 2e-5, (jit_compile, key)
    # Maps can differ only where a threshold or argmax meets a float32 near-tie.
    for key in MAP_KEYS + (common.PRED_INSTANCE_KEY,):
      agreement = np.mean(outputs[key].numpy() == eager[key].numpy())
      assert agreement >= 0.999, (jit_compile, key, agreement)


def _small_coco_config(dl2_reference, crop=(65, 97)):
  config = load_reference_config(dl2_reference, 'coco_r50_129x129')
  for options in (config.train_dataset_options, config.eval_dataset_options):
    options.crop_size[:] = list(crop)
  return config


class _TwoReplicas:
  num_replicas_in_sync = 2


@pytest.mark.parametrize('use_sync_batchnorm', [True, False])
def test_batchnorm_is_synchronized_only_across_several_replicas(monkeypatch, use_sync_batchnorm):
  config = config_pb2.ExperimentOptions()
  solver = config.trainer_options.solver_options
  solver.use_sync_batchnorm = use_sync_batchnorm
  solver.batchnorm_momentum, solver.batchnorm_epsilon = 0.5, 1e-4
  one_replica = builder.norm_layer_from_config(config)(axis=3, name='bn')
  assert not one_replica.synchronized
  graph = tf.function(lambda x: one_replica(x, training=True)).get_concrete_function(
      tf.TensorSpec([2, 5, 5, 4])).graph
  assert 'FusedBatchNormV3' in {op.type for op in graph.get_operations()}
  monkeypatch.setattr(tf.distribute, 'get_strategy', lambda: _TwoReplicas())
  several = builder.norm_layer_from_config(config)(axis=3, name='bn')
  assert several.synchronized == use_sync_batchnorm
  assert several.momentum == pytest.approx(0.5) and several.epsilon == pytest.approx(1e-4)


def test_builder_overrides_and_errors(dl2_reference):
  config = _small_coco_config(dl2_reference)
  options = config.model_options.max_deeplab
  options.num_mask_slots = 16
  options.use_auxiliary_semantic_decoder = False
  options.transformer_decoder_num_layers[:] = [1, 0, 1]
  config.trainer_options.solver_options.use_sync_batchnorm = True
  model = builder.build_model(config, build=False)
  assert model.num_mask_slots == 16
  assert model.auxiliary_output_number == 2
  items = model.checkpoint_items
  assert 'semantic_decoder' not in items and 'semantic_last_layer' in items
  batch_norm = items['pixel_space_mask_batch_norm']
  assert not batch_norm.synchronized  # One replica: Keras' fused kernel.
  assert batch_norm.momentum == pytest.approx(0.99) and batch_norm.epsilon == pytest.approx(1e-3)
  assert model.post_processor.options.output_size == (65, 97)
  # Batch 2 at a 65x97 crop (not built for it beforehand: built on first call).
  outputs = model(tf.random.uniform([2, 65, 97, 3], 0, 255, seed=3), training=False)
  assert outputs[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY].shape == (2, 17, 25, 16)
  assert outputs[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY].shape == (2, 16, 134)
  assert outputs[common.PRED_SEMANTIC_LOGITS_KEY].shape == (2, 3, 4, 134)  # no decoder: OS 32
  assert outputs[common.PRED_PANOPTIC_KEY].shape == (2, 65, 97)

  config.model_options.backbone.name = 'kmax_resnet101'
  with pytest.raises(ValueError, match=r'model_options\.backbone\.name.*kmax_convnext_base'):
    builder.build_model(config, build=False)
  config = _small_coco_config(dl2_reference)
  config.model_options.max_deeplab.high_resolution_output_stride = 8
  with pytest.raises(ValueError, match='high_resolution_output_stride'):
    builder.build_model(config, build=False)
  config = _small_coco_config(dl2_reference)
  config.model_options.max_deeplab.auxiliary_semantic_head.output_channels = 19
  with pytest.raises(ValueError, match='134 classes'):
    builder.build_model(config, build=False)


def test_descriptor_defaults_drive_the_architecture(dl2_reference):
  config = load_reference_config(dl2_reference, 'cityscapes_r50_129x257')
  descriptor_settings = builder.resolve_kmax_settings(
      config.model_options.max_deeplab,
      dataset_descriptors.get_dataset_descriptor('cityscapes_panoptic'))
  assert descriptor_settings.num_mask_slots == 256
  assert descriptor_settings.high_resolution_output_stride == 2
  assert not descriptor_settings.use_auxiliary_semantic_decoder
  assert descriptor_settings.transformer_decoder_drop_path_keep_prob == pytest.approx(0.8)


@pytest.mark.slow
def test_mixed_bfloat16_inference_runs(dl2_reference):
  config = _small_coco_config(dl2_reference)
  policy = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy('mixed_bfloat16')
  try:
    model = builder.build_model(config, build=False)
    outputs = model(tf.random.uniform([2, 65, 97, 3], 0, 255, seed=1), training=False)
  finally:
    keras.mixed_precision.set_global_policy(policy)
  for key in RAW_KEYS:
    assert outputs[key].dtype == tf.float32
    assert np.all(np.isfinite(outputs[key].numpy()))
  assert outputs[common.PRED_PANOPTIC_KEY].shape == (2, 65, 97)
  assert outputs[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY].shape == (2, 17, 25, 128)
