"""Tests for kmax_tf/layers/activations.py."""

import math

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf.layers import activations


def test_gelu_is_exact_erf_form():
  x = np.linspace(-4.0, 4.0, 41).astype(np.float32)
  expected = [0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x]
  np.testing.assert_allclose(activations.get_activation('gelu')(tf.constant(x)), expected,
                             rtol=1e-6, atol=1e-6)
  # The tanh approximation differs measurably at x = 2 (1.95459769 vs 1.95449728).
  approx = activations.get_activation('approximated_gelu')(tf.constant([2.0]))
  assert abs(float(approx[0]) - 1.9545977) < 1e-5
  assert abs(float(activations.get_activation('GeLU')(tf.constant([2.0]))[0]) - 1.9544997) < 1e-5


def test_relu_and_identity_names():
  x = tf.constant([-1.5, 0.0, 2.0])
  np.testing.assert_array_equal(activations.get_activation('relu')(x), [0.0, 0.0, 2.0])
  for name in ('none', 'identity', 'linear'):
    np.testing.assert_array_equal(activations.get_activation(name)(x), x)


def test_unknown_activation_names_the_choices():
  with pytest.raises(ValueError, match='unknown activation'):
    activations.get_activation('not_an_activation')
