"""Drop path (stochastic depth) helpers.

Reference: G. Huang, Y. Sun, Z. Liu, D. Sedra, K. Weinberger, Deep Networks
with Stochastic Depth, ECCV 2016.
"""

from typing import Optional

import tensorflow as tf

from kmax_tf.keras_setup import keras


def keep_prob_for_stage(keep_prob_for_last_stage: float, schedule: str,
                        current_stage: int, num_stages: int) -> float:
  """Drop-path keep probability of one stage.

  Args:
    keep_prob_for_last_stage: keep probability of the last stage.
    schedule: 'constant' (every stage uses `keep_prob_for_last_stage`) or
      'linear' (1.0 at stage 0, i.e. the stem, down to the last stage's value).
    current_stage: index of the current stage.
    num_stages: index of the last stage.

  Returns:
    The keep probability in (0, 1].
  """
  if schedule == 'constant':
    return keep_prob_for_last_stage
  if schedule == 'linear':
    return 1.0 - (1.0 - keep_prob_for_last_stage) * current_stage / num_stages
  raise ValueError(f"drop path schedule must be 'constant' or 'linear', got {schedule!r}")


def random_keep_mask(reference: tf.Tensor, keep_prob: float) -> Optional[tf.Tensor]:
  """Per-sample mask that keeps a residual path with probability `keep_prob`.

  Args:
    reference: float [B, ...] tensor whose batch size, rank and dtype the mask takes.
    keep_prob: keep probability; 1.0 returns None (nothing to drop).

  Returns:
    None, or a [B, 1, ..., 1] tensor of 0 and 1/keep_prob (unit expectation).
  """
  if keep_prob >= 1.0:
    return None
  batch_size = tf.shape(reference)[0]
  mask_shape = tf.concat([[batch_size], tf.ones([reference.shape.rank - 1], tf.int32)], 0)
  uniform = tf.random.uniform(mask_shape, dtype=reference.dtype)
  return tf.math.divide(tf.floor(keep_prob + uniform), keep_prob)


class DropPath(keras.layers.Layer):
  """Drops the whole input of a sample with probability 1 - keep_prob in training.

  Input and output: float [B, ...]; identity when not training.
  """

  def __init__(self, drop_path_keep_prob: float = 1.0, name: Optional[str] = None):
    super().__init__(name=name)
    if not 0.0 < drop_path_keep_prob <= 1.0:
      raise ValueError(f'drop_path_keep_prob must be in (0, 1], got {drop_path_keep_prob}')
    self._drop_path_keep_prob = drop_path_keep_prob

  def call(self, inputs: tf.Tensor, training=False) -> tf.Tensor:
    if not training or self._drop_path_keep_prob >= 1.0:
      return inputs
    keep = self._drop_path_keep_prob
    shape = tf.concat([tf.shape(inputs)[:1], tf.ones([inputs.shape.rank - 1], tf.int32)], 0)
    return (inputs / keep) * tf.floor(keep + tf.random.uniform(shape, 0, 1, dtype=inputs.dtype))

  def get_config(self):
    config = super().get_config()
    config['drop_path_keep_prob'] = self._drop_path_keep_prob
    return config
