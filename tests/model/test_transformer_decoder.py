"""kMaX transformer decoder: parity on DeepLab2's stored pixel-decoder outputs."""

import functools

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf import common
from kmax_tf.keras_setup import keras
from kmax_tf.model import prediction_head
from kmax_tf.model import transformer_decoder as td
from tests.helpers import dl2_checkpoint

_NAME = 'coco_r50_129x129'
_BN = functools.partial(keras.layers.BatchNormalization, momentum=0.99, epsilon=1e-3)


def _clustering_head():
  return prediction_head.KMaXPredictionHead(134, 0, use_semantic_head=False, bn_layer=_BN,
                                            name='MaXDeepLab')


def _relative_error(actual, expected):
  return float(np.abs(np.asarray(actual) - expected).max() / np.abs(expected).max())


@pytest.fixture(scope='module')
def reference(dl2_reference):
  """The decoder with DeepLab2's weights, run on the stored COCO R50 endpoints."""
  data = np.load(dl2_reference / 'forward' / f'{_NAME}.npz')
  decoder = td.KMaXTransformerDecoder(_clustering_head, bn_layer=_BN, num_mask_slots=128,
                                      drop_path_keep_prob=0.8)
  endpoints = {key.split('/')[1]: tf.constant(data[key]) for key in data.files
               if key.split('/')[0] in ('encoder', 'pixel_decoder')}
  decoder(endpoints)  # builds the weights
  dl2_checkpoint.restore_reference({'transformer_decoder': decoder},
                                   dl2_reference / 'manifests' / 'coco_r50.tsv',
                                   dl2_reference / 'forward' / f'{_NAME}_moving_stats.npz')
  outputs = decoder(endpoints, training=False, return_intermediates=True)
  return decoder, data, outputs


def test_kmeans_assignments_and_centres_match_deeplab2(reference):
  _, data, outputs = reference
  np.testing.assert_allclose(outputs[td.CLUSTER_CENTERS_INIT],
                             data['transformer_decoder/cluster_centers_init'], rtol=0, atol=0)
  auxiliary = outputs[common.PRED_AUXILIARY_OUTPUTS]
  for layer in range(6):
    prefix = f'transformer_decoder/aux_layer{layer}/'
    logits = auxiliary[layer][common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY]
    np.testing.assert_array_equal(np.argmax(logits, axis=-1), data[prefix + 'kmeans_assignment'])
    assert _relative_error(logits, data[prefix + 'pixel_space_mask_logits']) < 1e-4
    assert _relative_error(auxiliary[layer][common.PRED_TRANSFORMER_CLASS_LOGITS_KEY],
                           data[prefix + 'transformer_class_logits']) < 1e-4
    centers = outputs[td.CLUSTER_CENTERS_AFTER_LAYER.format(layer)]
    assert _relative_error(
        centers, data[f'transformer_decoder/cluster_centers_after_layer{layer}']) < 1e-4
  for key in (td.TRANSFORMER_CLASS_FEATURE, td.TRANSFORMER_MASK_FEATURE):
    assert _relative_error(outputs[key], data[f'transformer_decoder/{key}']) < 1e-4


def test_layer_strides_and_endpoints(reference):
  decoder, data, outputs = reference
  # Layers 0-1 run at stride 32, 2-3 at 16, 4-5 at 8: aux masks at those sizes.
  sizes = [outputs[common.PRED_AUXILIARY_OUTPUTS][i][
      common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY].shape[1] for i in range(6)]
  assert sizes == [5, 5, 9, 9, 17, 17]
  assert outputs[td.FEATURE_PANOPTIC] is not None
  np.testing.assert_array_equal(outputs[td.FEATURE_SEMANTIC], data['encoder/stage5'])
  assert decoder.num_layers == 6 and decoder.num_mask_slots == 128
  names = [group.name for group in decoder._kmax_decoder]
  assert names[0] == 'kmax_transformer_decoder_os32_0'
  assert names[-1] == 'kmax_transformer_decoder_os8_1'


def _small_endpoints(batch=2):
  rng = np.random.default_rng(0)
  shapes = {'decoder_stage1': (3, 4, 64), 'decoder_stage2': (5, 7, 32),
            'decoder_stage3': (9, 13, 16), 'decoder_output': (17, 25, 8), 'stage5': (3, 4, 64)}
  return {key: tf.constant(rng.normal(size=(batch,) + shape).astype(np.float32))
          for key, shape in shapes.items()}


def _small_decoder(keep_prob, layers=(1, 0, 2), slots=7):
  head = functools.partial(prediction_head.KMaXPredictionHead, 5, 0, use_semantic_head=False,
                           pixel_space_head_channels=16, pixel_space_feature_channels=8,
                           bn_layer=_BN)
  return td.KMaXTransformerDecoder(head, bn_layer=_BN, num_layers_per_stage=layers,
                                   num_mask_slots=slots, drop_path_keep_prob=keep_prob)


def test_configurable_layers_slots_and_drop_path():
  endpoints = _small_endpoints()
  decoder = _small_decoder(keep_prob=1.0)
  outputs = decoder(endpoints, training=False)
  assert len(outputs[common.PRED_AUXILIARY_OUTPUTS]) == 3
  assert outputs[td.TRANSFORMER_CLASS_FEATURE].shape == (2, 7, 256)
  aux_sizes = [a[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY].shape[1:]
               for a in outputs[common.PRED_AUXILIARY_OUTPUTS]]
  assert aux_sizes == [(3, 4, 7), (9, 13, 7), (9, 13, 7)]
  # Without drop path, training is deterministic; with keep 0.5 it is not.
  first = decoder(endpoints, training=True)[td.TRANSFORMER_MASK_FEATURE].numpy()
  second = decoder(endpoints, training=True)[td.TRANSFORMER_MASK_FEATURE].numpy()
  np.testing.assert_array_equal(first, second)
  tf.random.set_seed(3)
  dropping = _small_decoder(keep_prob=0.5)
  dropping(endpoints)
  # Residual-branch ends start with gamma 0; make the branches non-zero.
  for weight in dropping.weights:
    if 'gamma' in weight.name:
      weight.assign(tf.ones_like(weight))
  runs = [dropping(endpoints, training=True)[td.TRANSFORMER_MASK_FEATURE].numpy()
          for _ in range(4)]
  assert any(np.abs(runs[0] - run).max() > 1e-3 for run in runs[1:])
  inference = [dropping(endpoints, training=False)[td.TRANSFORMER_MASK_FEATURE].numpy()
               for _ in range(2)]
  np.testing.assert_array_equal(inference[0], inference[1])


def test_invalid_arguments():
  with pytest.raises(ValueError, match='one entry per stride'):
    _small_decoder(1.0, layers=(2, 2))
  with pytest.raises(ValueError, match='num_mask_slots'):
    _small_decoder(1.0, slots=0)


def test_compiled_centre_steps_match_the_layer_path():
  endpoints = _small_endpoints()
  decoder = _small_decoder(keep_prob=1.0)
  decoder(endpoints, training=False)  # builds (plain path)
  for weight in decoder.weights:  # non-trivial residual branches and statistics
    if 'gamma' in weight.name or 'moving_variance' in weight.name:
      weight.assign(tf.random.uniform(weight.shape, 0.5, 1.5, seed=1))
  layer = decoder._kmax_decoder[0].transformer_layer
  compiled = decoder(endpoints, training=False)
  assert layer._compiled_center_steps is not None
  # The same inference through the Keras layers (as inside an XLA function).
  plain = tf.function(lambda e: decoder(e, training=False), jit_compile=True)(endpoints)
  for key in (td.TRANSFORMER_CLASS_FEATURE, td.TRANSFORMER_MASK_FEATURE):
    np.testing.assert_allclose(compiled[key], plain[key], rtol=1e-4, atol=1e-4 *
                               np.abs(plain[key].numpy()).max())
