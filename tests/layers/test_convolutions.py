"""Tests for kmax_tf/layers/convolutions.py."""

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf.layers import convolutions


def test_strided_conv_pads_symmetrically():
  # DeepLab2 pads a 7x7 stride-2 conv by 3 on every side (Keras 'same' would pad 2/3).
  layer = convolutions.Conv2DSame(4, 7, 'stem', strides=2, use_bias=False)
  x = tf.random.uniform([1, 10, 10, 3], seed=1)
  y = layer(x)
  expected = tf.nn.conv2d(tf.pad(x, [[0, 0], [3, 3], [3, 3], [0, 0]]), layer._conv.kernel,
                          strides=2, padding='VALID')
  assert y.shape == (1, 5, 5, 4)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_conv_bn_act_children_and_zero_gamma():
  layer = convolutions.Conv2DSame(8, 1, 'conv3_bn', use_bias=False, use_bn=True,
                                  bn_gamma_initializer='zeros', activation='none')
  y = layer(tf.ones([2, 3, 3, 5]), training=False)
  np.testing.assert_array_equal(y, np.zeros([2, 3, 3, 8]))  # gamma 0, beta 0
  assert layer._conv.kernel.shape == (1, 1, 5, 8)
  assert layer._batch_norm.gamma.shape == (8,)


def test_bias_with_bn_is_rejected():
  with pytest.raises(ValueError, match='use_bias and use_bn'):
    convolutions.Conv2DSame(8, 3, 'bad', use_bias=True, use_bn=True)


def test_stacked_separable_attribute_names():
  stack = convolutions.StackedConv2DSame(
      2, 'depthwise_separable_conv', 6, 5, 'conv_block', use_bias=False, use_bn=True,
      activation='gelu')
  y = stack(tf.ones([1, 7, 7, 4]))
  assert y.shape == (1, 7, 7, 6)
  assert stack._conv1_bn_act._depthwise._depthwise_conv.depthwise_kernel.shape == (5, 5, 4, 1)
  assert stack._conv2_bn_act._pointwise._conv.kernel.shape == (1, 1, 6, 6)


def test_conv1d_with_bn_on_sequences():
  layer = convolutions.Conv1D(16, 'class_embedding_projection', use_bias=False, use_bn=True,
                              activation='gelu')
  y = layer(tf.ones([2, 128, 256]), training=False)
  assert y.shape == (2, 128, 16)
  assert layer._conv.kernel.shape == (1, 256, 16)


def _keras_depthwise(layer, x):
  """What the wrapped keras DepthwiseConv2D computes on x (DeepLab2's op)."""
  if not convolutions._is_unit_stride(layer._strides):
    x = layer._zeropad(x)
  return layer._depthwise_conv.call(x)


@pytest.mark.parametrize('strides,atrous_rate', [(1, 1), (2, 1), (1, 2)])
def test_depthwise_matches_keras_depthwise_in_every_backend(strides, atrous_rate):
  layer = convolutions.DepthwiseConv2DSame(5, 'depthwise', strides=strides,
                                           atrous_rate=atrous_rate, use_bias=True)
  x = tf.random.uniform([2, 13, 11, 6], -1, 1, seed=3)
  layer.build(x.shape)
  layer._depthwise_conv.bias.assign(tf.range(6, dtype=tf.float32) * 0.1)
  expected = _keras_depthwise(layer, x).numpy()
  assert expected.shape == (2, -(-13 // strides), -(-11 // strides), 6)
  # Inference (undilated: grouped conv with oneDNN): bit-identical to DepthwiseConv2dNative.
  np.testing.assert_array_equal(layer(x, training=False), expected)
  np.testing.assert_array_equal(tf.function(lambda v: layer(v, training=False))(x),
                                tf.function(lambda v: _keras_depthwise(layer, v))(x))
  np.testing.assert_array_equal(layer(x, training=True), expected)
  # XLA (shifted multiply-adds): same values up to float rounding.
  xla = tf.function(lambda v: layer(v, training=False), jit_compile=True)(x)
  np.testing.assert_allclose(xla, expected, rtol=1e-5, atol=1e-5)


def test_depthwise_variables_keep_keras_names():
  layer = convolutions.DepthwiseConv2DSame(3, 'depthwise', use_bias=True)
  layer(tf.ones([1, 5, 5, 4]))
  assert sorted(v.name for v in layer.variables) == [
      'depthwise/depthwise_conv/bias:0', 'depthwise/depthwise_conv/depthwise_kernel:0']
  assert layer._depthwise_conv.depthwise_kernel.shape == (3, 3, 4, 1)
