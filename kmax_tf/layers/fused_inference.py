"""Inference-only fusions of normalization layers with what surrounds them.

Keras' BatchNormalization with `synchronized=True` (DeepLab2's choice) never
uses the fused kernel, so at inference a BN is two full passes over its input
(multiply, add) and an exact GeLU five more (negate, multiply, erfc, two
multiplies). Two rewrites make that cheaper, with the same values up to float
rounding:

* BN over the channels of an NHWC tensor followed by ReLU or nothing runs as
  `FusedBatchNormV3` (inference) + `Relu`; in a graph, Grappler's remapper
  then folds both into the producing convolution (oneDNN post-ops), so the BN
  costs no pass of its own.
* Otherwise (GeLU, or several normalized axes) BN and activation compile into
  one XLA kernel: one pass, 2-2.5x faster on [1, 161, 161, 256] tensors. GeLU
  uses the erf form, 0.5 x (1 + erf(x / sqrt(2))): the same function as
  TensorFlow's erfc form (differences of a few float32 ulps of the layer's
  largest value), and XLA's erf is a third cheaper than its erfc.

The same idea serves the axial attention's per-term BN + sum (+ softmax) of
stacked similarities (`batch_norm_sum`) and LayerNorm (`LayerNormalization`,
whose Keras form is five TensorFlow ops).

Only used in inference (training keeps the plain Keras path, whose statistics
and gradients it needs) and outside XLA (inside an XLA function everything is
fused anyway); the XLA kernel only for large tensors. These conditions are
asked of `kmax_tf.backend`, which lists every such kernel choice.
"""

from typing import Callable, Dict, Optional, Sequence, Tuple

import tensorflow as tf

from kmax_tf import backend
from kmax_tf.keras_setup import keras
from kmax_tf.layers import activations

# Below this many elements the XLA launch costs more than the fusion saves.
MIN_FUSED_ELEMENTS = 1 << 17
# Activations whose XLA lowering is as accurate as TensorFlow's kernels.
_FUSABLE_ACTIVATIONS = ('relu', 'gelu', 'approximated_gelu', 'none', 'identity', 'linear')
_IDENTITIES = ('none', 'identity', 'linear')
# Activations Grappler's remapper folds, with a FusedBatchNorm, into a convolution.
_CONV_FOLDABLE_ACTIVATIONS = ('relu',) + _IDENTITIES
_SQRT_HALF = 0.7071067811865476
_FUSED_BATCH_NORM_MIN_EPSILON = 1.001e-5

_functions: Dict[Tuple[str, str], Callable] = {}


def _applicable(training, activation: Optional[str]) -> bool:
  """Inference outside XLA, with an activation the rewrites keep exact."""
  return (backend.fuses_inference(training) and
          (activation or 'none').lower() in _FUSABLE_ACTIVATIONS)


def _large(x: tf.Tensor) -> bool:
  elements = x.shape.num_elements()
  return elements is not None and elements >= MIN_FUSED_ELEMENTS


def _exact_gelu_erf_form(x: tf.Tensor) -> tf.Tensor:
  return 0.5 * x * (1.0 + tf.math.erf(x * _SQRT_HALF))


def _xla_activation(name: str) -> Callable[[tf.Tensor], tf.Tensor]:
  return _exact_gelu_erf_form if name == 'gelu' else activations.get_activation(name)


def _compiled(kind: str, activation: Optional[str]) -> Callable:
  """One XLA function per (kind, activation); each traces once per shape and dtype.

  Uncompiled where `backend.compiles_helpers()` is False (other runtimes).
  """
  key = (kind, (activation or 'none').lower(), backend.compiles_helpers())
  if key not in _functions:
    activation_fn = _xla_activation(key[1])
    if kind == 'activation':
      function = activation_fn
    elif kind == 'layer_norm':
      def function(x, gamma, beta, epsilon):
        # Keras' unfused LayerNormalization arithmetic (moments in float32).
        inputs = tf.cast(x, tf.float32)
        mean, variance = tf.nn.moments(inputs, [-1], keepdims=True)
        normalized = tf.nn.batch_normalization(inputs, mean, variance, beta, gamma, epsilon)
        return tf.cast(normalized, x.dtype)
    elif kind == 'batch_norm_sum':
      def function(terms, mean, variance, beta, gamma, epsilon):
        stacked = tf.stack(terms)
        normalized = tf.nn.batch_normalization(
            tf.cast(stacked, tf.float32), mean, variance, beta, gamma, epsilon)
        return activation_fn(tf.cast(tf.reduce_sum(normalized, axis=0), stacked.dtype))
    else:
      def function(x, mean, variance, beta, gamma, epsilon):
        # Same arithmetic as Keras' non-fused BatchNormalization in inference
        # (tf.nn.batch_normalization on float32), then the activation in the input dtype.
        normalized = tf.nn.batch_normalization(
            tf.cast(x, tf.float32), mean, variance, beta, gamma, epsilon)
        return activation_fn(tf.cast(normalized, x.dtype))
    _functions[key] = (tf.function(function, jit_compile=True, reduce_retracing=False)
                       if key[2] else function)
  return _functions[key]


def _inference_params(batch_norm: keras.layers.Layer, rank: int):
  """(mean, variance, beta, gamma) float32 of a plain Keras BN over a rank-`rank` input, or None.

  None for other layers, unbuilt ones, renorm/virtual-batch/adjusted BN, and
  several normalized axes without full-rank parameters. Keras broadcasts the
  parameters as they are stored: [C] for the last axis only, full rank (e.g.
  [3, 1, heads, 1, 1]) for several axes; so are these.
  """
  if not isinstance(batch_norm, keras.layers.BatchNormalization) or not batch_norm.built:
    return None
  if (batch_norm.renorm or batch_norm.virtual_batch_size is not None or
      batch_norm.adjustment is not None):
    return None
  param_shape = batch_norm.moving_mean.shape
  if list(batch_norm.axis) != [rank - 1] and param_shape.rank != rank:
    return None

  def param(variable, default):
    if variable is None:
      return tf.constant(default, tf.float32, param_shape)
    return tf.cast(variable, tf.float32)

  return (param(batch_norm.moving_mean, 0.0), param(batch_norm.moving_variance, 1.0),
          param(batch_norm.beta, 0.0), param(batch_norm.gamma, 1.0))


def batch_norm_activation(x: tf.Tensor, batch_norm: keras.layers.Layer, training,
                          activation: Optional[str]) -> Optional[tf.Tensor]:
  """`activation(batch_norm(x))` by one of the rewrites above, or None when neither applies.

  Applicable in inference, outside XLA, for a built Keras BatchNormalization
  (no renorm, no virtual batches) normalizing the last axis, or several axes
  with full-rank parameters, and a relu/gelu/identity activation.

  Args:
    x: float [..., C].
    batch_norm: the (built) BatchNormalization layer.
    training: the caller's training flag.
    activation: activation name or None.

  Returns:
    float [..., C] in x's dtype, or None (the caller runs the layers itself).
  """
  if not _applicable(training, activation):
    return None
  params = _inference_params(batch_norm, x.shape.rank)
  if params is None:
    return None
  mean, variance, beta, gamma = params
  channels_last = list(batch_norm.axis) == [x.shape.rank - 1]
  name = (activation or 'none').lower()
  # (fused_batch_norm raises epsilons below its kernel's minimum; keep those on the Keras path.)
  if (channels_last and x.shape.rank == 4 and name in _CONV_FOLDABLE_ACTIVATIONS and
      batch_norm.epsilon >= _FUSED_BATCH_NORM_MIN_EPSILON):
    # FusedBatchNormV3 takes float32 statistics for float32/bfloat16/float16 inputs.
    x, _, _ = tf.compat.v1.nn.fused_batch_norm(
        x, gamma, beta, mean=mean, variance=variance, epsilon=float(batch_norm.epsilon),
        is_training=False)
    return x if name in _IDENTITIES else tf.nn.relu(x)
  if not _large(x):
    return None
  return _compiled('batch_norm', activation)(x, mean, variance, beta, gamma,
                                             float(batch_norm.epsilon))


def batch_norm_sum(batch_norm: keras.layers.Layer, terms: Sequence[tf.Tensor], training,
                   then: Optional[str] = None) -> Optional[tf.Tensor]:
  """`then(reduce_sum(batch_norm(stack(terms)), 0))` as one XLA kernel, or None.

  The axial attention's pattern: similarity (or retrieval) terms are stacked,
  normalized per term and summed; fused, the stack and the per-term outputs
  are never written to memory. Conditions as batch_norm_activation (the
  stacked tensor counts as the large tensor).

  Args:
    batch_norm: the (built) BatchNormalization over the stacked tensor.
    terms: T float tensors of one shape [...].
    training: the caller's training flag.
    then: 'softmax' (last axis) or None.

  Returns:
    float [...] in the terms' dtype, or None (the caller runs the layers itself).
  """
  if not _applicable(training, None) or not terms:
    return None
  params = _inference_params(batch_norm, terms[0].shape.rank + 1)
  elements = terms[0].shape.num_elements()
  if params is None or elements is None or elements * len(terms) < MIN_FUSED_ELEMENTS:
    return None
  return _compiled('batch_norm_sum', then)(list(terms), *params, float(batch_norm.epsilon))


def layer_norm(layer: keras.layers.LayerNormalization, x: tf.Tensor,
               training) -> Optional[tf.Tensor]:
  """`layer(x)` for a last-axis Keras LayerNormalization as one XLA kernel, or None.

  Keras computes the moments and the normalization in five TensorFlow ops
  (2.5x slower on [1, 161, 161, 256]). Conditions as batch_norm_activation.

  Args:
    layer: the (built) LayerNormalization.
    x: float [..., C], already in the layer's compute dtype.
    training: the caller's training flag.

  Returns:
    float [..., C] in x's dtype, or None (the caller runs the layer itself).
  """
  if not _applicable(training, None) or not _large(x) or not layer.built:
    return None
  if list(layer.axis) != [x.shape.rank - 1] or layer.dtype != 'float32':
    return None
  channels = x.shape[-1]
  gamma = tf.ones([channels]) if layer.gamma is None else tf.cast(layer.gamma, tf.float32)
  beta = tf.zeros([channels]) if layer.beta is None else tf.cast(layer.beta, tf.float32)
  return _compiled('layer_norm', None)(x, gamma, beta, float(layer.epsilon))


class LayerNormalization(keras.layers.LayerNormalization):
  """Keras LayerNormalization (same weights and checkpoint keys) using `layer_norm` when it can.

  Call: float [..., C] -> float [..., C].
  """

  def call(self, inputs, training=None):
    if isinstance(inputs, tf.Tensor):
      fused = layer_norm(self, tf.cast(inputs, self.compute_dtype), training)
      if fused is not None:
        return fused
    return super().call(inputs)


def activation(x: tf.Tensor, training, name: str) -> Optional[tf.Tensor]:
  """`activation(x)` as one XLA kernel, or None when not applicable (see batch_norm_activation)."""
  if not _applicable(training, name) or not _large(x) or name.lower() in _IDENTITIES:
    return None
  return _compiled('activation', name)(x)


def batch_norm(layer: keras.layers.Layer, x: tf.Tensor, training) -> tf.Tensor:
  """`layer(x, training=training)`, as one XLA kernel when batch_norm_activation applies."""
  fused = batch_norm_activation(x, layer, training, None)
  return layer(x, training=training) if fused is None else fused
