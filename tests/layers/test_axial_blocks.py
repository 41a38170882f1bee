"""Tests for kmax_tf/layers/axial_blocks.py."""

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf.layers import axial_blocks


def test_fresh_block_is_activated_identity():
  # conv3_bn starts with gamma = 0, so a new block returns its activated input.
  block = axial_blocks.AxialBlock([4, 4, 16], activation='gelu', name='block2')
  x = tf.random.normal([2, 5, 5, 16], seed=2)
  np.testing.assert_allclose(block(x, training=False), tf.nn.gelu(x, approximate=False),
                             rtol=1e-6, atol=1e-6)
  assert block._shortcut is None


def test_strided_bottleneck_shapes_and_shortcut():
  block = axial_blocks.AxialBlock([64, 64, 256], strides=2, name='block1')
  y = block(tf.zeros([1, 33, 33, 64]), training=False)
  assert y.shape == (1, 17, 17, 256)
  assert block._shortcut._conv.kernel.shape == (1, 1, 64, 256)
  assert block._conv2_bn_act._conv.kernel.shape == (3, 3, 64, 64)


def test_axial_block_and_drop_path_mask():
  block = axial_blocks.AxialBlock([16, 8, 32], attention_type='axial', name='block1')
  x = tf.random.normal([2, 4, 4, 32], seed=3)
  block(x)
  block._conv3_bn._batch_norm.gamma.assign(tf.ones([32]))
  mask = tf.constant([0.0, 2.0], shape=[2, 1, 1, 1])
  full = block(x, training=False)
  masked = block(x, training=False, drop_path_mask=mask)
  shortcut = tf.nn.relu(x)
  np.testing.assert_allclose(masked[0], shortcut[0], atol=1e-6)
  np.testing.assert_allclose(masked[1] - shortcut[1], 2.0 * (full[1] - shortcut[1]),
                             rtol=1e-5, atol=1e-5)
  assert block._attention._height_axis.qkv_kernel.shape == (16, 8 + 8 + 16)


def test_bad_filters_and_attention_type():
  with pytest.raises(ValueError, match='filters_list'):
    axial_blocks.AxialBlock([4], name='b')
  with pytest.raises(ValueError, match='attention_type'):
    axial_blocks.AxialBlock([4, 4, 16], attention_type='global', name='b')
