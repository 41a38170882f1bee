"""Tests for kmax_tf/layers/stems.py."""

import tensorflow as tf

from kmax_tf.layers import stems


def test_inception_stem_shapes_and_children():
  stem = stems.InceptionStem(activation='gelu', width_multiplier=0.5)
  out = stem(tf.zeros([1, 65, 33, 3]), training=False)
  assert out.shape == (1, 33, 17, 64)
  assert stem._conv1_bn_act._conv.kernel.shape == (3, 3, 3, 32)
  assert stem._conv2_bn_act._conv.kernel.shape == (3, 3, 32, 32)
  assert stem._conv3_bn._conv.kernel.shape == (3, 3, 32, 64)
  assert stem.name == 'stem'
