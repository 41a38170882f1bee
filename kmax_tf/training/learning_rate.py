"""Learning-rate schedules of DeepLab2's trainer: poly or cosine decay, linear warmup.

The schedule is a function of the optimizer's own step counter (`iterations`),
which equals the global step when the optimizer is restored from a checkpoint.
"""

import tensorflow as tf

from kmax_tf.keras_setup import keras

POLY = 'poly'
COSINE = 'cosine'


class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
  """Ramps linearly from 0 to `peak_learning_rate`, then follows `after_warmup`.

  For step < warmup_steps the rate is peak_learning_rate * step / warmup_steps
  (so the very first update, step 0, uses a rate of 0, as DeepLab2); from
  warmup_steps on it is `after_warmup(step)`.
  """

  def __init__(self, peak_learning_rate: float, after_warmup, warmup_steps: int, name=None):
    super().__init__()
    if warmup_steps <= 0:
      raise ValueError(f'warmup_steps must be positive, got {warmup_steps}.')
    self.peak_learning_rate = peak_learning_rate
    self.after_warmup = after_warmup
    self.warmup_steps = warmup_steps
    self.name = name

  def __call__(self, step):
    with tf.name_scope(self.name or 'linear_warmup'):
      step = tf.cast(step, tf.float32)
      warmup_steps = tf.cast(self.warmup_steps, tf.float32)
      ramp = self.peak_learning_rate * step / warmup_steps
      return tf.cond(step < warmup_steps, lambda: ramp, lambda: self.after_warmup(step))

  def get_config(self):
    return {
        'peak_learning_rate': self.peak_learning_rate,
        'after_warmup': keras.optimizers.schedules.serialize(self.after_warmup),
        'warmup_steps': self.warmup_steps,
        'name': self.name,
    }


def _poly_decay(solver_options, peak: float, total_steps: int):
  return keras.optimizers.schedules.PolynomialDecay(
      initial_learning_rate=peak,
      decay_steps=total_steps,
      end_learning_rate=solver_options.poly_end_learning_rate,
      power=solver_options.poly_learning_power,
      cycle=False)


def _cosine_decay(solver_options, peak: float, total_steps: int):
  del solver_options  # No policy-specific fields.
  return keras.optimizers.schedules.CosineDecay(
      initial_learning_rate=peak, decay_steps=total_steps, alpha=0.0)


# `solver_options.learning_policy` -> builder(solver_options, peak, total_steps);
# config validation reads this list.
DECAY_SCHEDULE_BUILDERS = {POLY: _poly_decay, COSINE: _cosine_decay}
SUPPORTED_POLICIES = tuple(DECAY_SCHEDULE_BUILDERS)


def build_learning_rate_schedule(solver_options, multiplier: float = 1.0):
  """Returns the schedule DeepLab2 builds from `SolverOptions`.

  Args:
    solver_options: a `trainer_pb2.SolverOptions` (learning_policy,
      base_learning_rate, training_number_of_steps, poly_learning_power,
      poly_end_learning_rate, warmup_steps).
    multiplier: scales the base learning rate (e.g. 0.1 for the backbone). The
      poly end learning rate is not scaled, as in DeepLab2.

  Returns:
    A `keras.optimizers.schedules.LearningRateSchedule`: step -> float32 rate.

  Raises:
    ValueError: for an unknown learning_policy or a non-positive number of steps.
  """
  peak = solver_options.base_learning_rate * multiplier
  total_steps = solver_options.training_number_of_steps
  if total_steps <= 0:
    raise ValueError('trainer_options.solver_options.training_number_of_steps must be positive, '
                     f'got {total_steps}.')
  policy = solver_options.learning_policy
  if policy not in DECAY_SCHEDULE_BUILDERS:
    raise ValueError(f'trainer_options.solver_options.learning_policy={policy!r} is not '
                     f'supported; use one of {SUPPORTED_POLICIES}.')
  schedule = DECAY_SCHEDULE_BUILDERS[policy](solver_options, peak, total_steps)
  if solver_options.warmup_steps:
    schedule = LinearWarmup(peak, schedule, solver_options.warmup_steps)
  return schedule
