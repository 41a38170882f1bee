"""Schedule values at hand-checked steps (DeepLab2: poly/cosine decay, linear warmup)."""

import math

import pytest

from kmax_tf.protos import trainer_pb2
from kmax_tf.training import learning_rate


def _options(**fields):
  options = trainer_pb2.SolverOptions(base_learning_rate=0.1, training_number_of_steps=100)
  for key, value in fields.items():
    setattr(options, key, value)
  return options


def _values(schedule, steps):
  return [float(schedule(step)) for step in steps]


def test_poly_without_warmup():
  schedule = learning_rate.build_learning_rate_schedule(_options(poly_learning_power=0.9))
  expected = [0.1, 0.1 * 0.5 ** 0.9, 0.1 * 0.01 ** 0.9, 0.0, 0.0]
  assert _values(schedule, [0, 50, 99, 100, 150]) == pytest.approx(expected, rel=1e-5, abs=1e-9)


def test_poly_with_end_rate_and_multiplier():
  schedule = learning_rate.build_learning_rate_schedule(
      _options(poly_learning_power=1.0, poly_end_learning_rate=0.001), multiplier=0.1)
  # (0.01 - 0.001) * (1 - 25/100) + 0.001; the end rate is not multiplied.
  assert _values(schedule, [0, 25, 100]) == pytest.approx([0.01, 0.00775, 0.001], rel=1e-5)


def test_linear_warmup_then_poly():
  schedule = learning_rate.build_learning_rate_schedule(
      _options(poly_learning_power=0.9, warmup_steps=10))
  expected = [0.0, 0.01, 0.09, 0.1 * 0.9 ** 0.9, 0.1 * 0.4 ** 0.9]
  assert _values(schedule, [0, 1, 9, 10, 60]) == pytest.approx(expected, rel=1e-5, abs=1e-9)


def test_cosine():
  schedule = learning_rate.build_learning_rate_schedule(_options(learning_policy='cosine'))
  expected = [0.1, 0.05 * (1 + math.cos(math.pi / 4)), 0.05, 0.0]
  assert _values(schedule, [0, 25, 50, 100]) == pytest.approx(expected, rel=1e-5, abs=1e-8)


def test_bad_policy_is_a_clear_error():
  with pytest.raises(ValueError, match='learning_policy'):
    learning_rate.build_learning_rate_schedule(_options(learning_policy='step'))
