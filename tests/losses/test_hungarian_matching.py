"""Tests of the TensorFlow linear sum assignment against scipy."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import optimize

from kmax_tf.losses import hungarian_matching

_solve = tf.function(hungarian_matching.linear_sum_assignment)
_solve_xla = tf.function(hungarian_matching.linear_sum_assignment, jit_compile=True)


def _check_optimal(costs: np.ndarray, col_for_row: np.ndarray, expect_unique: bool) -> None:
  """Asserts that every batch element's assignment is complete and optimal."""
  num_pairs = min(costs.shape[1:])
  for cost, cols in zip(costs, col_for_row):
    rows = np.flatnonzero(cols >= 0)
    assert len(rows) == num_pairs
    assert len(set(cols[rows].tolist())) == num_pairs
    ref_rows, ref_cols = optimize.linear_sum_assignment(cost)
    optimum = cost[ref_rows, ref_cols].sum()
    np.testing.assert_allclose(cost[rows, cols[rows]].sum(), optimum, rtol=1e-12, atol=1e-12)
    if expect_unique:
      np.testing.assert_array_equal(rows, ref_rows)
      np.testing.assert_array_equal(cols[rows], ref_cols)


@pytest.mark.parametrize('shape', [(12, 8, 8), (12, 5, 9), (12, 9, 5), (3, 40, 40)])
def test_random_float_costs_match_scipy(shape):
  rng = np.random.default_rng(sum(shape))
  costs = rng.normal(size=shape)
  _check_optimal(costs, _solve(tf.constant(costs)).numpy(), expect_unique=True)


@pytest.mark.parametrize('shape', [(16, 10, 10), (16, 6, 11), (16, 11, 6)])
def test_integer_costs_with_ties_reach_scipy_optimum(shape):
  rng = np.random.default_rng(7 + shape[1])
  costs = rng.integers(0, 3, size=shape).astype(np.float64)
  costs[0] = 1.0  # All-tied matrix.
  _check_optimal(costs, _solve(tf.constant(costs)).numpy(), expect_unique=False)


def test_deeplab2_style_padding_and_void_rows():
  """Square padding with -999 and constant +999 void rows, as the loss builds it."""
  rng = np.random.default_rng(3)
  num_masks, num_slots = 14, 9
  costs = np.full((6, num_masks, num_masks), -999.0)
  costs[:, :, :num_slots] = -rng.uniform(0, 1, (6, num_masks, num_slots))
  for b in range(6):
    void_rows = rng.choice(num_masks, size=6 + b % 3, replace=False)
    costs[b, void_rows, :num_slots] = 999.0
  result = _solve(tf.constant(costs, tf.float32)).numpy()
  _check_optimal(costs.astype(np.float32).astype(np.float64), result, expect_unique=False)


def test_forbidden_entries_are_avoided():
  rng = np.random.default_rng(11)
  costs = rng.normal(size=(8, 7, 7))
  forbidden = rng.uniform(size=costs.shape) < 0.4
  for b in range(costs.shape[0]):  # Keep one feasible permutation.
    forbidden[b, np.arange(7), rng.permutation(7)] = False
  costs[forbidden] = np.inf
  result = _solve(tf.constant(costs)).numpy()
  for b in range(costs.shape[0]):
    assert np.isfinite(costs[b, np.arange(7), result[b]]).all()
  _check_optimal(costs, result, expect_unique=True)


def test_active_rows_match_only_those_rows():
  rng = np.random.default_rng(5)
  costs = rng.normal(size=(6, 10, 7))
  active = rng.uniform(size=(6, 10)) < 0.5
  active[:, 0] = True
  active[0] = False
  active[0, :7] = True  # As many active rows as columns.
  result = _solve(tf.constant(costs), tf.constant(active)).numpy()
  np.testing.assert_array_equal(result < 0, ~active)
  for b in range(costs.shape[0]):
    rows = np.flatnonzero(active[b])
    _check_optimal(costs[b:b + 1, rows], result[b:b + 1, rows], expect_unique=True)


def test_xla_compiled_matches_graph_and_float32():
  rng = np.random.default_rng(9)
  costs = rng.integers(0, 20, size=(4, 12, 9)).astype(np.float32)
  xla = _solve_xla(tf.constant(costs)).numpy()
  _check_optimal(costs.astype(np.float64), xla, expect_unique=False)


def test_hungarian_matching_is_a_permutation_matrix():
  costs = np.array([[[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]]])
  matrix = tf.function(hungarian_matching.hungarian_matching)(tf.constant(costs)).numpy()
  # Optimum 5: rows -> columns (1, 0, 2).
  np.testing.assert_array_equal(matrix[0], np.eye(3, dtype=bool)[[1, 0, 2]])


def test_rejects_dynamic_shapes():
  with pytest.raises(ValueError, match='static rows/cols'):
    hungarian_matching.linear_sum_assignment(tf.zeros([2, 3]))
