"""Inference-only fusion of BatchNorm + activation into one XLA kernel.

Keras' BatchNormalization with `synchronized=True` (DeepLab2's choice) never
uses the fused kernel, so at inference a BN is two full passes over its input
(multiply, add) and an exact GeLU five more (negate, multiply, erfc, two
multiplies). On this memory-bound CPU path, compiling the chain with XLA makes
it one pass: 2-2.5x faster on [1, 161, 161, 256] tensors. The arithmetic is
the same as `tf.nn.batch_normalization` followed by the activation (XLA's erfc
may differ from Eigen's in the last bit).

Only used for large tensors in inference (training keeps the plain Keras
path, whose statistics and gradients it needs) and outside XLA (inside an XLA
function everything is fused anyway).
"""

from typing import Callable, Dict, Optional, Tuple

import tensorflow as tf

from kmax_tf.keras_setup import keras
from kmax_tf.layers import activations
from kmax_tf.layers import xla_context

# Below this many elements the XLA launch costs more than the fusion saves.
MIN_FUSED_ELEMENTS = 1 << 17
# Activations whose XLA lowering is as accurate as TensorFlow's kernels.
_FUSABLE_ACTIVATIONS = ('relu', 'gelu', 'approximated_gelu', 'none', 'identity', 'linear')

_functions: Dict[Tuple[str, str], Callable] = {}


def _is_inference(training) -> bool:
  return training is None or training is False


def _fusable(x: tf.Tensor, training, activation: Optional[str]) -> bool:
  if not _is_inference(training) or xla_context.in_xla_context():
    return False
  if (activation or 'none').lower() not in _FUSABLE_ACTIVATIONS:
    return False
  elements = x.shape.num_elements()
  return elements is not None and elements >= MIN_FUSED_ELEMENTS


def _compiled(kind: str, activation: Optional[str]) -> Callable:
  """One XLA function per (kind, activation); each traces once per shape and dtype."""
  key = (kind, (activation or 'none').lower())
  if key not in _functions:
    activation_fn = activations.get_activation(key[1])
    if kind == 'activation':
      function = activation_fn
    else:
      def function(x, mean, variance, beta, gamma, epsilon):
        # Same arithmetic as Keras' non-fused BatchNormalization in inference
        # (tf.nn.batch_normalization on float32), then the activation in the input dtype.
        normalized = tf.nn.batch_normalization(
            tf.cast(x, tf.float32), mean, variance, beta, gamma, epsilon)
        return activation_fn(tf.cast(normalized, x.dtype))
    _functions[key] = tf.function(function, jit_compile=True, reduce_retracing=False)
  return _functions[key]


def batch_norm_activation(x: tf.Tensor, batch_norm: keras.layers.Layer, training,
                          activation: Optional[str]) -> Optional[tf.Tensor]:
  """`activation(batch_norm(x))` as one XLA kernel, or None when not applicable.

  Applicable in inference, outside XLA, for a Keras BatchNormalization
  normalizing the last axis, or several axes with full-rank parameters (no
  renorm, no virtual batches), of a large tensor, and a relu/gelu/identity
  activation.

  Args:
    x: float [..., C].
    batch_norm: the (built) BatchNormalization layer.
    training: the caller's training flag.
    activation: activation name or None.

  Returns:
    float [..., C] in x's dtype, or None (the caller runs the layers itself).
  """
  if not _fusable(x, training, activation):
    return None
  if not isinstance(batch_norm, keras.layers.BatchNormalization) or not batch_norm.built:
    return None
  if (batch_norm.renorm or batch_norm.virtual_batch_size is not None or
      batch_norm.adjustment is not None):
    return None
  # Keras broadcasts the parameters as they are stored: [C] for the last axis
  # only, full rank (e.g. [3, 1, heads, 1, 1]) for several axes.
  param_shape = batch_norm.moving_mean.shape
  if list(batch_norm.axis) != [x.shape.rank - 1] and param_shape.rank != x.shape.rank:
    return None

  def param(variable, default):
    if variable is None:
      return tf.constant(default, tf.float32, param_shape)
    return tf.cast(variable, tf.float32)

  return _compiled('batch_norm', activation)(
      x, param(batch_norm.moving_mean, 0.0), param(batch_norm.moving_variance, 1.0),
      param(batch_norm.beta, 0.0), param(batch_norm.gamma, 1.0), float(batch_norm.epsilon))


def activation(x: tf.Tensor, training, name: str) -> Optional[tf.Tensor]:
  """`activation(x)` as one XLA kernel, or None when not applicable (see batch_norm_activation)."""
  if not _fusable(x, training, name) or name.lower() in ('none', 'identity', 'linear'):
    return None
  return _compiled('activation', name)(x)


def batch_norm(layer: keras.layers.Layer, x: tf.Tensor, training) -> tf.Tensor:
  """`layer(x, training=training)`, as one XLA kernel when batch_norm_activation applies."""
  fused = batch_norm_activation(x, layer, training, None)
  return layer(x, training=training) if fused is None else fused
