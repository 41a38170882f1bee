"""Loss primitives against their plain TensorFlow compositions."""

import functools

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf.losses import loss_functions
from tests.helpers import backward_tensors


def _plain_self_similarity_cross_entropy(features, target_ids, temperature):
  # DeepLab2's composition: products of one-hot targets (all-zero rows for negative ids).
  targets = tf.one_hot(target_ids, tf.reduce_max(target_ids) + 1)
  labels = tf.einsum('bkm,bjm->bkj', targets, targets)
  labels /= tf.maximum(tf.reduce_sum(labels, axis=-1, keepdims=True), 1.0)
  logits = tf.einsum('bkd,bjd->bkj', features, features) / temperature
  return tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def test_self_similarity_cross_entropy_matches_autodiff_of_the_plain_ops():
  rng = np.random.default_rng(0)
  features = tf.constant(rng.normal(size=[2, 40, 8]), tf.float32)
  ids = rng.integers(0, 5, size=[2, 40])
  ids[0, :3] = -1  # Void pixels: all-zero label rows, still with a gradient.
  targets = tf.constant(ids, tf.int32)
  # Uneven upstream gradients, as from the top-k average.
  weights = tf.constant(rng.uniform(size=[2, 40]), tf.float32)
  results = []
  for fn in (functools.partial(loss_functions.self_similarity_cross_entropy, num_ids=5),
             _plain_self_similarity_cross_entropy):
    with tf.GradientTape() as tape:
      tape.watch(features)
      per_row = fn(features, targets, 0.3)
      total = tf.reduce_sum(per_row * weights)
    results.append((per_row.numpy(), tape.gradient(total, features).numpy()))
  (lean_value, lean_gradient), (plain_value, plain_gradient) = results
  assert np.all(plain_value[0, :3] == 0) and plain_value.min() < plain_value.max()
  np.testing.assert_allclose(lean_value, plain_value, rtol=1e-5, atol=1e-6)
  assert np.abs(plain_gradient).max() > 0.1
  np.testing.assert_allclose(lean_gradient, plain_gradient, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('lean', [True, False])
def test_only_the_plain_composition_keeps_square_tensors_for_the_backward_pass(lean):
  features = tf.random.normal([1, 256, 8])
  targets = tf.random.uniform([1, 256], 0, 4, tf.int32)
  fn = (functools.partial(loss_functions.self_similarity_cross_entropy, num_ids=4) if lean
        else _plain_self_similarity_cross_entropy)
  kept = backward_tensors.kept_for_gradient(
      lambda x: tf.reduce_sum(fn(x, targets, 0.3)), features)
  square = [t.name for t in kept if t.shape.num_elements() == 256 * 256]
  assert bool(square) != lean, square


def test_the_similarities_are_recomputed_only_once_the_upstream_gradient_arrives():
  features = tf.random.normal([1, 256, 8])
  targets = tf.random.uniform([1, 256], 0, 4, tf.int32)
  early = backward_tensors.computed_before_upstream_gradient(
      lambda x: tf.reduce_sum(loss_functions.self_similarity_cross_entropy(
          x, targets, 0.3, num_ids=4)), features)
  assert [t.name for t in early if t.shape.num_elements() >= 256 * 8] == []
