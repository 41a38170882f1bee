"""Tests for kmax_tf/layers/lean_normalization.py (BN + GeLU without keeping the BN output)."""

import functools

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf.keras_setup import keras
from kmax_tf.layers import activations
from kmax_tf.layers import convolutions
from tests.helpers import backward_tensors


def _conv_bn_gelu(synchronized=False, rank=4):
  bn_layer = functools.partial(keras.layers.BatchNormalization, synchronized=synchronized,
                               momentum=0.9, epsilon=1e-3)
  if rank == 4:
    layer = convolutions.Conv2DSame(8, 3, 'conv_bn_act', use_bias=False, use_bn=True,
                                    bn_layer=bn_layer, activation='gelu')
    layer(tf.zeros([2, 9, 9, 4]))
  else:
    layer = convolutions.Conv1D(8, 'conv_bn_act', use_bias=False, use_bn=True,
                                bn_layer=bn_layer, activation='gelu')
    layer(tf.zeros([2, 9, 4]))
  # Non-trivial BN parameters, so a wrong recomputation shows in the gradient.
  layer._batch_norm.gamma.assign(np.linspace(0.5, 2.0, 8).astype(np.float32))
  layer._batch_norm.beta.assign(np.linspace(-1.0, 1.0, 8).astype(np.float32))
  return layer


def _values_and_gradients(layer, x, lean):
  # The layer's moving statistics are updated by each call: restore them.
  moving = [v.numpy() for v in (layer._batch_norm.moving_mean, layer._batch_norm.moving_variance)]
  weights = layer.trainable_variables

  @tf.function
  def step(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      if lean:
        with activations.lean_gradients():
          y = layer(x, training=True)
      else:
        y = layer(x, training=True)
      # A weighted sum: the gradient of a plain sum through BN is nearly zero.
      weights_of_y = tf.reshape(tf.sin(tf.range(tf.size(y), dtype=y.dtype) * 0.37), tf.shape(y))
      loss = tf.reduce_sum(y * weights_of_y)
    return y, tape.gradient(loss, [x] + weights)

  y, gradients = step(x)
  updated = [v.numpy() for v in (layer._batch_norm.moving_mean, layer._batch_norm.moving_variance)]
  for variable, value in zip((layer._batch_norm.moving_mean, layer._batch_norm.moving_variance),
                             moving):
    variable.assign(value)
  return y.numpy(), [g.numpy() for g in gradients], updated


@pytest.mark.parametrize('rank', [4, 3])
def test_lean_batch_norm_gelu_has_plain_values_gradients_and_statistics(rank):
  layer = _conv_bn_gelu(rank=rank)
  shape = [2, 9, 9, 4] if rank == 4 else [2, 9, 4]
  x = tf.constant(np.random.RandomState(0).normal(1.0, 2.0, shape).astype(np.float32))
  plain_y, plain_gradients, plain_moving = _values_and_gradients(layer, x, lean=False)
  lean_y, lean_gradients, lean_moving = _values_and_gradients(layer, x, lean=True)
  np.testing.assert_array_equal(lean_y, plain_y)
  for lean, plain in zip(lean_gradients, plain_gradients):
    assert np.abs(plain).max() > 1e-2
    np.testing.assert_allclose(lean, plain, rtol=1e-4, atol=1e-5)
  for lean, plain in zip(lean_moving, plain_moving):
    np.testing.assert_array_equal(lean, plain)


def _full_size_backward_tensors(analysis, layer, rank=4):
  """Op types of the full-size outputs `analysis` finds in the lean d loss / d x."""
  shape = [2, 9, 9, 4][:rank - 1] + [4]
  x = tf.constant(np.random.RandomState(1).normal(size=shape).astype(np.float32))

  def loss(x):
    with activations.lean_gradients():
      return tf.reduce_sum(tf.square(layer(x, training=True)))

  return sorted(t.op.type for t in analysis(loss, x) if t.shape == shape[:-1] + [8])


def _kept_full_size(layer, rank=4):
  """Full-size forward outputs that the backward pass reads."""
  return _full_size_backward_tensors(backward_tensors.kept_for_gradient, layer, rank)


@pytest.mark.parametrize('rank', [4, 3])
def test_lean_batch_norm_gelu_keeps_the_convolution_output_not_the_normalized_one(rank):
  # Conv2D: the BN input, for the BN gradient; IdentityN: the GeLU output, for tf.square.
  kept = _kept_full_size(_conv_bn_gelu(rank=rank), rank)
  assert kept == (['Conv2D', 'IdentityN'] if rank == 4 else ['IdentityN', 'Squeeze'])


@pytest.mark.parametrize('rank', [4, 3])
def test_lean_batch_norm_gelu_recomputes_only_once_the_upstream_gradient_arrives(rank):
  early = _full_size_backward_tensors(backward_tensors.computed_before_upstream_gradient,
                                      _conv_bn_gelu(rank=rank), rank)
  assert early == []


def test_synchronized_batch_norm_keeps_its_output():
  # Synchronized moments are global: the backward pass could not recompute them locally.
  # Its normalized output (an AddV2) is kept for the GeLU gradient.
  assert _kept_full_size(_conv_bn_gelu(synchronized=True)) == ['AddV2', 'Conv2D', 'IdentityN']


def test_an_unbuilt_layer_takes_the_lean_path_too():
  bn_layer = functools.partial(keras.layers.BatchNormalization, epsilon=1e-3)
  layer = convolutions.Conv2DSame(8, 3, 'conv_bn_act', use_bias=False, use_bn=True,
                                  bn_layer=bn_layer, activation='gelu')
  assert _kept_full_size(layer) == ['Conv2D', 'IdentityN']
