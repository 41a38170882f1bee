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


@pytest.mark.parametrize('activation', ['relu', 'none'])
def test_small_channels_last_batch_norm_runs_as_fused_batch_norm(activation):
  # Below MIN_FUSED_ELEMENTS: the FusedBatchNormV3 rewrite (foldable into a conv) still applies.
  batch_norm = _batch_norm(8)
  x = tf.random.normal([2, 5, 7, 8], stddev=3.0, seed=3)
  assert x.shape.num_elements() < fused_inference.MIN_FUSED_ELEMENTS
  expected = activations.get_activation(activation)(batch_norm(x, training=False))
  graph = tf.function(lambda v: fused_inference.batch_norm_activation(v, batch_norm, False,
                                                                      activation))
  op_types = {op.type for op in graph.get_concrete_function(x).graph.get_operations()}
  assert 'FusedBatchNormV3' in op_types
  np.testing.assert_allclose(graph(x), expected, rtol=1e-5, atol=1e-5)
  # Tiny epsilons (below the fused kernel's minimum) stay on the Keras path.
  tiny = keras.layers.BatchNormalization(epsilon=1e-6)
  tiny.build([None, 8])
  assert fused_inference.batch_norm_activation(x, tiny, False, activation) is None


@pytest.mark.parametrize('then', [None, 'softmax'])
def test_batch_norm_sum_matches_stack_batch_norm_sum(then):
  # The axial attention's similarity layout: [terms, N, heads, L, M], BN per (term, head).
  terms = [tf.random.normal([12, 4, 40, 40], stddev=2.0, seed=s) for s in range(3)]
  layer = keras.layers.BatchNormalization(axis=[0, 2], epsilon=1e-3)
  layer.build([3, None, 4, None, None])
  rng = np.random.default_rng(1)
  layer.set_weights([rng.uniform(0.5, 2.0, w.shape) if i in (0, 3) else rng.normal(0, 1, w.shape)
                     for i, w in enumerate(layer.get_weights())])
  expected = tf.reduce_sum(layer(tf.stack(terms), training=False), axis=0)
  if then == 'softmax':
    expected = tf.nn.softmax(expected)
  fused = fused_inference.batch_norm_sum(layer, terms, False, then=then)
  assert fused is not None
  np.testing.assert_allclose(fused, expected, rtol=1e-5, atol=1e-5)
  assert fused_inference.batch_norm_sum(layer, terms, True, then=then) is None
  assert fused_inference.batch_norm_sum(layer, [t[:1, :, :4, :4] for t in terms], False) is None


def test_layer_normalization_matches_keras_and_keeps_checkpoint_keys():
  shape = [1, 40, 40, 96]  # above MIN_FUSED_ELEMENTS
  ours = fused_inference.LayerNormalization(epsilon=1e-6)
  reference = keras.layers.LayerNormalization(epsilon=1e-6)
  ours.build(shape)
  reference.build(shape)
  rng = np.random.default_rng(2)
  weights = [rng.uniform(0.5, 2.0, shape[-1]), rng.normal(0, 1, shape[-1])]
  ours.set_weights(weights)
  reference.set_weights(weights)
  x = tf.random.normal(shape, mean=1.0, stddev=3.0, seed=5)
  assert fused_inference.layer_norm(ours, x, False) is not None
  np.testing.assert_allclose(ours(x, training=False), reference(x), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ours(x, training=True), reference(x), rtol=1e-6, atol=1e-6)
  assert fused_inference.layer_norm(ours, x, True) is None
  assert fused_inference.layer_norm(ours, x[:, :2, :2], False) is None


def test_layer_normalization_checkpoint_keys_are_keras(tmp_path):
  keys = []
  for index, layer in enumerate([fused_inference.LayerNormalization(),
                                 keras.layers.LayerNormalization()]):
    layer.build([None, 8])
    path = tf.train.Checkpoint(norm=layer).write(str(tmp_path / f'ckpt{index}'))
    keys.append(sorted(name for name, _ in tf.train.list_variables(path)))
  assert keys[0] == keys[1] and 'norm/gamma/.ATTRIBUTES/VARIABLE_VALUE' in keys[0]
