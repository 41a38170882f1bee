"""Tests for kmax_tf/layers/fused_inference.py."""

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf.keras_setup import keras
from kmax_tf.layers import activations
from kmax_tf.layers import fused_inference

_SHAPE = [1, 64, 64, 40]  # above MIN_FUSED_ELEMENTS


def _batch_norm(channels, axis=-1, synchronized=True):
  layer = keras.layers.BatchNormalization(axis=axis, epsilon=1e-3, synchronized=synchronized)
  layer.build([None, None, None, channels])
  rng = np.random.default_rng(0)
  layer.set_weights([rng.uniform(0.5, 2.0, channels), rng.normal(0, 1, channels),
                     rng.normal(0, 1, channels), rng.uniform(0.5, 2.0, channels)])
  return layer


@pytest.mark.parametrize('activation', ['gelu', 'relu', 'none'])
def test_fused_batch_norm_activation_matches_keras(activation):
  assert np.prod(_SHAPE) >= fused_inference.MIN_FUSED_ELEMENTS
  batch_norm = _batch_norm(_SHAPE[-1])
  x = tf.random.normal(_SHAPE, stddev=3.0, seed=2)
  expected = activations.get_activation(activation)(batch_norm(x, training=False))
  fused = fused_inference.batch_norm_activation(x, batch_norm, False, activation)
  assert fused is not None and fused.dtype == tf.float32
  np.testing.assert_allclose(fused, expected, rtol=1e-5, atol=1e-5)


def test_fused_batch_norm_keeps_bfloat16_inputs_in_bfloat16():
  batch_norm = _batch_norm(_SHAPE[-1])
  x = tf.cast(tf.random.normal(_SHAPE, seed=2), tf.bfloat16)
  fused = fused_inference.batch_norm_activation(x, batch_norm, None, 'gelu')
  assert fused.dtype == tf.bfloat16
  expected = tf.nn.gelu(batch_norm(x, training=False), approximate=False)
  np.testing.assert_allclose(tf.cast(fused, tf.float32), tf.cast(expected, tf.float32),
                             rtol=2e-2, atol=2e-2)


def test_not_fused_when_training_small_other_axis_or_inside_xla():
  x = tf.random.normal(_SHAPE, seed=2)
  batch_norm = _batch_norm(_SHAPE[-1])
  assert fused_inference.batch_norm_activation(x, batch_norm, True, 'gelu') is None
  assert fused_inference.batch_norm_activation(x[:, :4, :4], batch_norm, False, 'gelu') is None
  assert fused_inference.batch_norm_activation(x, batch_norm, False, 'swish') is None
  other_axis = keras.layers.BatchNormalization(axis=1)
  other_axis.build(_SHAPE)
  assert fused_inference.batch_norm_activation(x, other_axis, False, 'gelu') is None
  assert fused_inference.activation(x, False, 'gelu') is not None  # eager: fused
  results = []
  tf.function(lambda v: results.append(fused_inference.activation(v, False, 'gelu')) or v,
              jit_compile=True)(x)
  assert results == [None]


def test_fused_activation_matches_gelu():
  x = tf.random.normal(_SHAPE, stddev=3.0, seed=4)
  fused = fused_inference.activation(x, False, 'gelu')
  np.testing.assert_allclose(fused, tf.nn.gelu(x, approximate=False), rtol=1e-6, atol=1e-6)
  assert fused_inference.activation(x, False, 'none') is None
