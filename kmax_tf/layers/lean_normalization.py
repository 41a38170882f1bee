"""BatchNorm then GeLU, in training, without keeping the BatchNorm output.

A training step keeps, for its backward pass, the input of every BatchNorm (its
gradient needs it) and, after a BN followed by GeLU, the BN output as well (the
GeLU's gradient needs its input). The second tensor is the first one
normalized: `batch_norm_gelu` recomputes it from the first in the backward pass
(the batch moments, then one multiply-add) and so keeps one full-size tensor
per such layer fewer. The forward values and the BatchNorm itself (statistics,
moving averages, gradients) are Keras' own.

Only inside `activations.lean_gradients()` (the trainer's forward pass) and
for batch statistics of the local batch: a BN synchronized across replicas
normalizes with global moments, which the backward pass would have to gather
again, so it keeps its output as before.
"""

from typing import Optional

import tensorflow as tf

from kmax_tf.keras_setup import keras
from kmax_tf.layers import activations


def _normalizes_local_last_axis(batch_norm: keras.layers.Layer, rank: int) -> bool:
  """A plain Keras BN over the last axis with moments of the local batch."""
  axis = batch_norm.axis  # An int until the layer is built.
  axes = [axis] if isinstance(axis, int) else list(axis)
  return (isinstance(batch_norm, keras.layers.BatchNormalization) and
          [a % rank for a in axes] == [rank - 1] and
          not getattr(batch_norm, 'synchronized', False) and
          not batch_norm.renorm and batch_norm.virtual_batch_size is None and
          batch_norm.adjustment is None)


def batch_norm_gelu(batch_norm: keras.layers.Layer, x: tf.Tensor,
                    training) -> Optional[tf.Tensor]:
  """gelu(batch_norm(x)) keeping only `x` for the gradient, or None when not applicable.

  Args:
    batch_norm: the layer's Keras BatchNormalization (built or not).
    x: float [..., C], the BN input (a convolution output).
    training: the layer's training flag; only a Python True applies.

  Returns:
    float [..., C] like `x`, or None (then the caller runs BN and GeLU itself).
  """
  if training is not True or not activations.gradients_are_lean():
    return None
  if x.shape.rank is None or not _normalizes_local_last_axis(batch_norm, x.shape.rank):
    return None
  normalized = batch_norm(x, training=True)
  gamma = (tf.convert_to_tensor(batch_norm.gamma) if batch_norm.scale
           else tf.ones(batch_norm.moving_mean.shape, batch_norm.moving_mean.dtype))
  beta = (tf.convert_to_tensor(batch_norm.beta) if batch_norm.center
          else tf.zeros(batch_norm.moving_mean.shape, batch_norm.moving_mean.dtype))
  reduce_axes = list(range(x.shape.rank - 1))
  epsilon = batch_norm.epsilon

  def normalize_again(x, gamma, beta):
    x = tf.cast(x, tf.float32)
    mean, variance = tf.nn.moments(x, reduce_axes)
    scale = tf.math.rsqrt(variance + epsilon) * tf.cast(gamma, tf.float32)
    return x * scale + (tf.cast(beta, tf.float32) - mean * scale)

  return activations.gelu_recomputing_input(normalized, normalize_again, x, gamma, beta)
