"""Tests for kmax_tf/layers/resize.py."""

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf.layers import resize


@pytest.mark.parametrize('channels', [8, 64])
def test_resize_bilinear_equals_align_corners_resize(channels):
  # <= 32 channels goes through DeepLab2's two one-axis passes; same values.
  x = tf.random.normal([2, 5, 9, channels], seed=4)
  expected = tf.compat.v1.image.resize_bilinear(x, [9, 17], align_corners=True)
  np.testing.assert_allclose(resize.resize_bilinear(x, [9, 17]), expected, atol=1e-5)
  assert resize.resize_bilinear(x, [5, 9]) is x


def test_align_corners_keeps_corner_pixels():
  x = tf.reshape(tf.range(6, dtype=tf.float32), [1, 2, 3, 1])
  y = resize.resize_align_corners(x, [3, 5]).numpy()[0, ..., 0]
  assert y[0, 0] == 0 and y[0, -1] == 2 and y[-1, 0] == 3 and y[-1, -1] == 5
  np.testing.assert_allclose(y[1], [1.5, 2.0, 2.5, 3.0, 3.5])
  with pytest.raises(ValueError, match='method'):
    resize.resize_align_corners(x, [3, 5], method='bicubic')


@pytest.mark.parametrize('shape,size', [((2, 5, 7, 3), (17, 25)), ((1, 21, 21, 16), (81, 81)),
                                        ((1, 9, 9, 40), (4, 5))])
def test_gather_resize_matches_tensorflow_kernel(shape, size):
  images = tf.random.normal(shape, seed=7)
  expected = tf.compat.v1.image.resize_bilinear(images, size, align_corners=True)
  np.testing.assert_allclose(resize.bilinear_align_corners_by_gathers(images, size), expected,
                             rtol=1e-6, atol=1e-6)
  # Under XLA resize_bilinear takes the gather path.
  xla = tf.function(lambda x: resize.resize_bilinear(x, size), jit_compile=True)(images)
  np.testing.assert_allclose(xla, expected, rtol=1e-6, atol=1e-6)
