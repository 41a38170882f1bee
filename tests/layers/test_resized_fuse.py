"""Tests for kmax_tf/layers/resized_fuse.py."""

import numpy as np
import tensorflow as tf

from kmax_tf.layers import resized_fuse


def test_routes_and_sum():
  fuse = resized_fuse.ResizedFuse('skip', height=9, width=5, num_channels=8, activation='gelu')
  same_width = tf.random.normal([1, 5, 3, 8], seed=1)  # resize only
  twice = tf.random.normal([1, 17, 9, 6], seed=2)  # (17 + 1) // 2 = 9: stride-2 conv
  other = tf.random.normal([1, 5, 3, 4], seed=3)  # 1x1 conv then resize
  out = fuse([same_width, twice, other], training=False)
  assert out.shape == (1, 9, 5, 8)
  assert not hasattr(fuse, '_resized_conv_bn1') and not hasattr(fuse, '_strided_conv_bn1')
  assert fuse._strided_conv_bn2._conv.kernel.shape == (1, 1, 6, 8)
  assert fuse._resized_conv_bn3._conv.kernel.shape == (1, 1, 4, 8)
  resize = lambda x: tf.compat.v1.image.resize_bilinear(x, [9, 5], align_corners=True)
  gelu = lambda x: tf.nn.gelu(x, approximate=False)
  expected = (resize(same_width)
              + fuse._strided_conv_bn2(gelu(twice), training=False)
              + resize(fuse._resized_conv_bn3(gelu(other), training=False)))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
