"""Tests for kmax_tf/layers/axial_block_groups.py (DeepLab2's stride/dilation/drop-path rules)."""

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf.keras_setup import keras
from kmax_tf.layers import axial_block_groups


def _group(**kwargs):
  defaults = dict(filters=8, num_blocks=3, name='stage4', original_resnet_stride=2,
                  original_resnet_input_stride=8, output_stride=32, backbone_type='resnet',
                  use_axial_beyond_stride=0, use_transformer_beyond_stride=0,
                  drop_path_keep_prob=0.8, drop_path_schedule='linear')
  defaults.update(kwargs)
  return axial_block_groups.BlockGroup(**defaults)


def test_resnet_stage4_stride_and_linear_drop_path():
  group = _group()
  features, memory = group((tf.zeros([1, 9, 9, 16]), None), training=False)
  assert features.shape == (1, 5, 5, 32) and memory is None
  # Block 1 runs at input stride 8 (< 16: no drop path), later blocks at stride 16.
  assert group.drop_path_keep_probs == pytest.approx((1.0, 0.85, 0.85))
  assert group._block1._conv2_bn_act._strides == 2
  assert group._block2._conv2_bn_act._strides == 1
  assert group._block2._conv2_bn_act._conv.dilation_rate == (1, 1)


def test_axial_blocks_only_beyond_stride_16():
  group = _group(backbone_type='resnet_beta', use_axial_beyond_stride=16, activation='gelu')
  group((tf.zeros([1, 9, 9, 16]), None), training=False)
  assert hasattr(group._block1, '_conv2_bn_act') and not hasattr(group._block1, '_attention')
  assert hasattr(group._block2, '_attention') and not hasattr(group._block2, '_conv2_bn_act')
  assert group._block2._conv1_bn_act._conv.kernel.shape == (1, 1, 32, 16)  # 2x expansion


def test_decoder_placement_dilates_bottlenecks():
  # The pixel decoder places its groups at input stride 32 with output stride 16.
  group = _group(num_blocks=1, original_resnet_stride=1, original_resnet_input_stride=32,
                 output_stride=16, drop_path_keep_prob=1.0, drop_path_schedule='constant')
  features, _ = group((tf.zeros([1, 6, 6, 8]), None), training=False)
  assert features.shape == (1, 6, 6, 32)
  assert group._block1._conv2_bn_act._conv.dilation_rate == (2, 2)


class _RecordingTransformer(keras.layers.Layer):
  def call(self, inputs, training=False):
    features, memory, auxiliary = inputs
    return features, memory + 1.0, auxiliary + ({'layer': self.name},)


def test_transformer_layers_follow_blocks():
  built = []

  def transformer_fn(name, drop_path_keep_prob):
    built.append((name, drop_path_keep_prob))
    return _RecordingTransformer(name=name)

  group = _group(num_blocks=2, original_resnet_stride=1, original_resnet_input_stride=32,
                 use_transformer_beyond_stride=16, transformer_layer_fn=transformer_fn,
                 use_axial_block=False, drop_path_schedule='constant')
  features = tf.ones([1, 3, 3, 4])
  out, memory, auxiliary = group((features, tf.zeros([1, 5, 2]), ()), training=False)
  assert built == [('block1_transformer', 0.8), ('block2_transformer', 0.8)]
  np.testing.assert_array_equal(out, features)
  np.testing.assert_array_equal(memory, np.full([1, 5, 2], 2.0))
  assert [a['layer'] for a in auxiliary] == ['block1_transformer', 'block2_transformer']
  assert group._block1 is None


def test_invalid_arguments():
  with pytest.raises(ValueError, match='power of 2'):
    _group(original_resnet_input_stride=6)
  with pytest.raises(ValueError, match='transformer_layer_fn'):
    _group(use_transformer_beyond_stride=16)
