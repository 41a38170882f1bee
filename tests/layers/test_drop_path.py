"""Tests for kmax_tf/layers/drop_path.py."""

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf.layers import drop_path


def test_linear_schedule_matches_deeplab2():
  # keep = 1 - (1 - p) * stage / 4; DeepLab2's R50 stage 4 (after the stride) is stage 3.
  assert drop_path.keep_prob_for_stage(0.8, 'linear', 3, 4) == pytest.approx(0.85)
  assert drop_path.keep_prob_for_stage(0.8, 'linear', 4, 4) == pytest.approx(0.8)
  assert drop_path.keep_prob_for_stage(0.8, 'constant', 1, 4) == 0.8
  with pytest.raises(ValueError, match='schedule'):
    drop_path.keep_prob_for_stage(0.8, 'cosine', 1, 4)


def test_random_keep_mask_values_and_shape():
  assert drop_path.random_keep_mask(tf.zeros([3, 2, 2, 1]), 1.0) is None
  tf.random.set_seed(3)
  mask = drop_path.random_keep_mask(tf.zeros([4000, 5, 5, 2]), 0.8).numpy()
  assert mask.shape == (4000, 1, 1, 1)
  assert set(np.unique(mask)) <= {0.0, np.float32(1 / 0.8)}
  assert abs(mask.mean() - 1.0) < 0.05  # unit expectation


def test_drop_path_layer_is_identity_at_inference():
  layer = drop_path.DropPath(0.5)
  x = tf.random.uniform([8, 3, 3, 2])
  np.testing.assert_array_equal(layer(x, training=False), x)
  out = layer(x, training=True).numpy()
  for sample, original in zip(out, x.numpy()):
    assert np.allclose(sample, 0.0) or np.allclose(sample, original / 0.5)
  with pytest.raises(ValueError):
    drop_path.DropPath(0.0)
