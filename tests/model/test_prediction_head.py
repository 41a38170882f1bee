"""kMaX prediction head: parity on DeepLab2's stored decoder features, names, void bias."""

import functools
import math

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf import common
from kmax_tf.keras_setup import keras
from kmax_tf.model import prediction_head
from tests.helpers import dl2_checkpoint

_NAME = 'coco_r50_129x129'
_BN = functools.partial(keras.layers.BatchNormalization, momentum=0.99, epsilon=1e-3)


def _semantic_decoder():
  return prediction_head.SemanticDecoder(
      'feature_semantic', ['res3', 'res2'], [64, 32], aspp_channels=256, decoder_channels=256,
      atrous_rates=[6, 12, 18], name='auxiliary_semantic_decoder', bn_layer=_BN,
      activation='gelu')


def _coco_head():
  return prediction_head.KMaXPredictionHead(134, 0, semantic_decoder_fn=_semantic_decoder,
                                            bn_layer=_BN, name='MaXDeepLab')


def _features(data):
  stage = {k: tf.constant(data[f'encoder/stage{k}']) for k in (2, 3, 5)}
  return {
      'feature_panoptic': tf.constant(data['pixel_decoder/decoder_output']),
      'feature_semantic': stage[5],
      'res2': tf.nn.relu(stage[2]),  # res_k = relu(stage_k) for ResNet-50 (README)
      'res3': tf.nn.relu(stage[3]),
      'transformer_class_feature': tf.constant(
          data['transformer_decoder/transformer_class_feature']),
      'transformer_mask_feature': tf.constant(
          data['transformer_decoder/transformer_mask_feature']),
  }


def test_head_matches_deeplab2_on_stored_features(dl2_reference):
  data = np.load(dl2_reference / 'forward' / f'{_NAME}.npz')
  head = _coco_head()
  features = _features(data)
  head(features)
  dl2_checkpoint.restore_reference(head.checkpoint_items,
                                   dl2_reference / 'manifests' / 'coco_r50.tsv',
                                   dl2_reference / 'forward' / f'{_NAME}_moving_stats.npz')
  outputs = head(features, training=False)
  for key in (common.PRED_SEMANTIC_LOGITS_KEY, common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY,
              common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY, common.PRED_TRANSFORMER_CLASS_LOGITS_KEY):
    error = np.abs(outputs[key].numpy() - data[key]).max() / np.abs(data[key]).max()
    assert error < 1e-4, (key, error)
  assert common.PRED_AUXILIARY_OUTPUTS not in outputs


def test_checkpoint_items_names():
  with_decoder = _coco_head().checkpoint_items
  assert sorted(with_decoder) == sorted([
      'pixel_space_head', 'transformer_mask_head', 'transformer_class_head',
      'pixel_space_feature_batch_norm', 'pixel_space_mask_batch_norm', 'semantic_decoder',
      'semantic_head_without_last_layer', 'semantic_last_layer'])
  without_decoder = prediction_head.KMaXPredictionHead(19, 255, bn_layer=_BN).checkpoint_items
  assert 'semantic_decoder' not in without_decoder and 'semantic_last_layer' in without_decoder
  clustering = prediction_head.KMaXPredictionHead(19, 255, use_semantic_head=False,
                                                  semantic_decoder_fn=_semantic_decoder)
  assert len(clustering.checkpoint_items) == 5


def test_class_count_and_void_bias():
  # COCO: void (0) is one of the 134 classes; Cityscapes: 19 classes + void.
  assert prediction_head.transformer_class_head_num_classes(134, 0) == 134
  assert prediction_head.transformer_class_head_num_classes(19, 255) == 20
  assert prediction_head.void_bias(134) == pytest.approx(math.log(133 * 9))
  head = prediction_head.KMaXPredictionHead(
      19, 255, use_semantic_head=False, pixel_space_head_channels=16,
      pixel_space_feature_channels=8, bn_layer=_BN)
  features = {'feature_panoptic': tf.random.normal([1, 9, 9, 4], seed=2),
              'transformer_class_feature': tf.zeros([1, 3, 16]),
              'transformer_mask_feature': tf.ones([1, 3, 16])}
  outputs = head(features)
  class_logits = outputs[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY].numpy()
  bias = head._transformer_class_head._conv.bias.numpy()
  expected = np.broadcast_to(bias, class_logits.shape).copy()
  expected[..., -1] += math.log(19 * 9)
  np.testing.assert_allclose(class_logits, expected, rtol=1e-6)
  # At initialization the void class has probability ~0.9.
  void = tf.nn.softmax(class_logits)[..., -1].numpy()
  assert np.all(np.abs(void - 0.9) < 0.02)
  assert outputs[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY].shape == (1, 9, 9, 3)
  norms = np.linalg.norm(outputs[common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY], axis=-1)
  np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
