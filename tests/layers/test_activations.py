"""Tests for kmax_tf/layers/activations.py."""

import functools
import math

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf.layers import activations
from tests.helpers import backward_tensors


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


def _kept_like_input(fn, x):
  return [t for t in backward_tensors.kept_for_gradient(lambda v: tf.reduce_sum(fn(v)), x)
          if t.shape == x.shape]


@pytest.mark.parametrize('dtype', [tf.float32, tf.float16])
def test_lean_gelu_has_plain_values_and_gradient_and_keeps_only_its_input(dtype):
  x = tf.constant(np.linspace(-5.0, 5.0, 101), dtype)
  gelu = activations.get_activation('gelu')
  plain = functools.partial(tf.nn.gelu, approximate=False)
  with activations.lean_gradients():
    with tf.GradientTape() as tape:
      tape.watch(x)
      lean_y = gelu(x)
    lean_dx = tape.gradient(lean_y, x)
    kept = _kept_like_input(gelu, x)
  with tf.GradientTape() as tape:
    tape.watch(x)
    plain_y = plain(x)
  plain_dx = tape.gradient(plain_y, x)
  np.testing.assert_array_equal(lean_y.numpy(), plain_y.numpy())
  tolerance = 1e-6 if dtype == tf.float32 else 2e-3
  np.testing.assert_allclose(lean_dx.numpy().astype(np.float32),
                             plain_dx.numpy().astype(np.float32), atol=tolerance, rtol=tolerance)
  # The plain op keeps three intermediates; the lean one only its input.
  assert len(_kept_like_input(plain, x)) >= 3
  assert [t.op.type for t in kept] == ['Placeholder']


@tf.custom_gradient
def _gelu_recomputing_without_waiting(x):
  def gradient(dy):
    return dy * (0.5 * tf.math.erfc(-x * 0.7071) + x * tf.exp(-0.5 * x * x) * 0.3989)
  return 0.5 * x * tf.math.erfc(-x * 0.7071), gradient


def _full_size_before_upstream_gradient(fn, x):
  return [t.op.type for t in backward_tensors.computed_before_upstream_gradient(
      lambda v: tf.reduce_sum(fn(v)), x) if t.shape == x.shape]


def test_lean_gelu_derivative_waits_for_the_upstream_gradient():
  # Computed early, the derivative would be held through the backward pass in place of x.
  x = tf.constant(np.linspace(-5.0, 5.0, 101), tf.float32)
  assert _full_size_before_upstream_gradient(_gelu_recomputing_without_waiting, x)
  with activations.lean_gradients():
    assert _full_size_before_upstream_gradient(activations.get_activation('gelu'), x) == []


def test_gelu_outside_lean_gradients_is_the_plain_op():
  graph = tf.function(activations.get_activation('gelu')).get_concrete_function(
      tf.TensorSpec([4], tf.float32)).graph
  types = {op.type for op in graph.get_operations()}
  assert 'IdentityN' not in types and 'Erfc' in types
