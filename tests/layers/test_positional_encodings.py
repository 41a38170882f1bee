"""Tests for kmax_tf/layers/positional_encodings.py."""

import numpy as np

from kmax_tf.layers import positional_encodings


def test_relative_distance_indices_hand_checked():
  # Row = query, column = key; distance 0 sits at MAX_SPAN - 1 = 254.
  np.testing.assert_array_equal(
      positional_encodings.relative_distance_indices(3, 3),
      [[254, 255, 256], [253, 254, 255], [252, 253, 254]])
  # A flange of 1 key on each side.
  np.testing.assert_array_equal(
      positional_encodings.relative_distance_indices(1, 3), [[253, 254, 255]])


def test_long_spans_are_clipped_to_the_table():
  indices = positional_encodings.relative_distance_indices(300, 300)
  assert indices.min() == 0 and indices.max() == 508


def test_table_size_is_crop_independent_and_gathered():
  layer = positional_encodings.RelativePositionalEncoding(5, 5, 16, 'query_rpe')
  rpe = layer(None)
  assert layer._embeddings.shape == (509, 16)
  assert rpe.shape == (5, 5, 16)
  np.testing.assert_array_equal(rpe[2, 4], layer._embeddings[256])  # key 4 - query 2 = +2
  assert [w.name.split('/')[-1] for w in layer.weights] == ['embeddings:0']
