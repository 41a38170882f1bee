"""Tests for kmax_tf/layers/axial_layers.py against a NumPy re-derivation."""

import functools

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf.keras_setup import keras
from kmax_tf.layers import axial_layers
from kmax_tf.layers import positional_encodings

_EPSILON = 1e-3
_BN = functools.partial(keras.layers.BatchNormalization, epsilon=_EPSILON)


def _randomize_batch_norms(layer, rng):
  for bn in (layer._batch_norm_qkv, layer._batch_norm_similarity,
             layer._batch_norm_retrieved_output):
    for variable, low, high in ((bn.gamma, 0.5, 1.5), (bn.beta, -0.2, 0.2),
                                (bn.moving_mean, -0.2, 0.2), (bn.moving_variance, 0.5, 1.5)):
      variable.assign(rng.uniform(low, high, variable.shape).astype(np.float32))


def _bn(x, bn):
  return ((x - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + _EPSILON)
          * bn.gamma.numpy() + bn.beta.numpy())


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _numpy_axial_attention(layer, x):
  """Multi-head attention with query/key/value RPEs and per-term BN, in NumPy."""
  heads, dk, dv = layer._num_heads, layer._key_depth_per_head, layer._value_depth_per_head
  n, length, _ = x.shape
  qkv = _bn(x @ layer.qkv_kernel.numpy(), layer._batch_norm_qkv)
  q = qkv[..., :heads * dk].reshape(n, length, heads, dk).transpose(0, 2, 1, 3)
  k = qkv[..., heads * dk:2 * heads * dk].reshape(n, length, heads, dk).transpose(0, 2, 1, 3)
  v = qkv[..., 2 * heads * dk:].reshape(n, length, heads, dv).transpose(0, 2, 1, 3)
  index = positional_encodings.relative_distance_indices(length, length)
  rpe_q = layer._query_rpe._embeddings.numpy()[index]  # [L, M, dk]
  rpe_k = layer._key_rpe._embeddings.numpy()[index]
  rpe_v = layer._value_rpe._embeddings.numpy()[index]
  terms = np.stack([
      np.einsum('nhld,nhmd->nhlm', q, k),
      np.einsum('nhld,lmd->nhlm', q, rpe_q),
      np.einsum('nhmd,lmd->nhlm', k, rpe_k)])
  weights = _softmax(_bn(terms, layer._batch_norm_similarity).sum(0))
  retrieved = np.stack([
      np.einsum('nhlm,nhmd->nhld', weights, v),
      np.einsum('nhlm,lmd->nhld', weights, rpe_v)])
  out = _bn(retrieved, layer._batch_norm_retrieved_output).sum(0)
  return out.transpose(0, 2, 1, 3).reshape(n, length, heads * dv)


def test_axial_attention_matches_numpy():
  rng = np.random.default_rng(0)
  layer = axial_layers.AxialAttention(total_key_depth=16, total_value_depth=32, num_heads=4,
                                      name='height_axis', bn_layer=_BN)
  x = rng.normal(size=(3, 7, 12)).astype(np.float32)
  layer(x)
  _randomize_batch_norms(layer, rng)
  for rpe in (layer._query_rpe, layer._key_rpe, layer._value_rpe):
    rpe._embeddings.assign(rng.normal(size=rpe._embeddings.shape).astype(np.float32))
  assert layer._batch_norm_similarity.gamma.shape == (3, 1, 4, 1, 1)
  assert layer._batch_norm_retrieved_output.gamma.shape == (2, 1, 4, 1, 8)
  np.testing.assert_allclose(layer(x, training=False), _numpy_axial_attention(layer, x),
                             rtol=1e-4, atol=1e-4)


def test_axial_attention_2d_runs_height_then_width_with_stride():
  rng = np.random.default_rng(1)
  layer = axial_layers.AxialAttention2D(strides=2, filters=8, num_heads=2, bn_layer=_BN)
  x = rng.normal(size=(2, 5, 6, 4)).astype(np.float32)
  y = layer(x, training=False).numpy()
  assert y.shape == (2, 3, 3, 16)
  # Height attention on each column, keep every 2nd row, width attention on each row.
  height = _numpy_axial_attention(layer._height_axis, x.transpose(0, 2, 1, 3).reshape(12, 5, 4))
  height = height.reshape(2, 6, 5, 16).transpose(0, 2, 1, 3)[:, ::2]
  width = _numpy_axial_attention(layer._width_axis, height.reshape(6, 6, 16)).reshape(2, 3, 6, 16)
  np.testing.assert_allclose(y, width[:, :, ::2], rtol=1e-4, atol=1e-4)


def test_axis_longer_than_query_shape_is_rejected():
  layer = axial_layers.AxialAttention(total_key_depth=8, total_value_depth=8, num_heads=2,
                                      query_shape=4)
  with pytest.raises(ValueError, match='<= 4'):
    layer(tf.zeros([1, 5, 3]))
