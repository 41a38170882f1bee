"""Activation functions by DeepLab2 name ('relu', 'gelu', 'none', ...).

Training memory: TensorFlow's exact GeLU, 0.5 * x * erfc(-x / sqrt(2)), keeps
three full-size intermediates for its gradient. Inside `lean_gradients()` (the
trainer's forward pass) 'gelu' keeps only its input and recomputes the rest in
the backward pass: the same forward values, two full-size tensors fewer per
GeLU (for COCO R50 at crop 641 the peak tensor memory of a training step drops
from 4.5 to 4.0 GB). Outside it (inference, export) it is TensorFlow's plain op.
"""

import contextlib
import functools
import math
import threading
from typing import Callable, Iterator

import tensorflow as tf

from kmax_tf.keras_setup import keras

Activation = Callable[[tf.Tensor], tf.Tensor]


def _identity(x: tf.Tensor) -> tf.Tensor:
  return tf.identity(x)


def _hard_sigmoid(x: tf.Tensor) -> tf.Tensor:
  return tf.nn.relu6(x + 3.0) * 0.16667


def _hard_swish(x: tf.Tensor) -> tf.Tensor:
  return x * tf.nn.relu6(x + 3.0) * (1.0 / 6.0)


_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
# Per thread: tf.distribute runs each replica's step in a thread of its own.
_LEAN = threading.local()


@contextlib.contextmanager
def lean_gradients() -> Iterator[None]:
  """GeLUs traced inside keep only their input for the backward pass."""
  previous = getattr(_LEAN, 'active', False)
  _LEAN.active = True
  try:
    yield
  finally:
    _LEAN.active = previous


@tf.custom_gradient
def _gelu_keeping_input(x: tf.Tensor):
  """Exact GeLU with TensorFlow's forward ops; the gradient needs only `x`."""
  y = 0.5 * x * tf.math.erfc(-x * _SQRT_HALF)

  def gradient(dy):
    # Not before dy: computed early, the derivative would be kept in place of x.
    with tf.control_dependencies([dy]):
      return dy * _gelu_derivative(x)

  return y, gradient


def gradients_are_lean() -> bool:
  """True inside `lean_gradients()`."""
  return getattr(_LEAN, 'active', False)


def _gelu_derivative(x: tf.Tensor) -> tf.Tensor:
  cdf = 0.5 * tf.math.erfc(-x * _SQRT_HALF)
  pdf = tf.exp(-0.5 * tf.square(x)) * _INV_SQRT_2PI
  return cdf + x * pdf


def gelu_recomputing_input(x: tf.Tensor, recompute: Callable[..., tf.Tensor],
                           *sources: tf.Tensor) -> tf.Tensor:
  """Exact GeLU of `x` whose gradient keeps `sources` instead of `x`.

  For an input that is cheap to compute again from tensors the backward pass
  keeps anyway (a BatchNorm output from the convolution output its own gradient
  needs), so `x` is freed after the forward pass.

  Args:
    x: float tensor, equal (up to float rounding) to `recompute(*sources)`.
    recompute: function of `sources` giving `x` again, in any float dtype.
    *sources: its tensor arguments; they get no gradient from here.

  Returns:
    gelu(x), shaped and typed as `x`.
  """

  @tf.custom_gradient
  def gelu(x, *sources):
    def gradient(dy):
      # Not before dy: the executor would otherwise run this as soon as
      # `sources` exist, and keep a full-size derivative in place of `x`.
      with tf.control_dependencies([dy]):
        derivative = _gelu_derivative(recompute(*sources))
      return [dy * tf.cast(derivative, dy.dtype)] + [None] * len(sources)

    return 0.5 * x * tf.math.erfc(-x * _SQRT_HALF), gradient

  return gelu(x, *sources)


def _gelu(x: tf.Tensor) -> tf.Tensor:
  if gradients_are_lean():
    return _gelu_keeping_input(x)
  return tf.nn.gelu(x, approximate=False)


# GeLU is the exact erf form unless 'approximated_gelu' is asked for, as in DeepLab2.
_ACTIVATIONS = {
    'relu': tf.nn.relu,
    'gelu': _gelu,
    'approximated_gelu': functools.partial(tf.nn.gelu, approximate=True),
    'swish': tf.nn.silu,
    'silu': tf.nn.silu,
    'relu6': tf.nn.relu6,
    'hard_swish': _hard_swish,
    'hard_sigmoid': _hard_sigmoid,
    'sigmoid': tf.math.sigmoid,
    'softmax': tf.nn.softmax,
    'elu': tf.nn.elu,
    'identity': _identity,
    'none': _identity,
    'linear': _identity,
}


def get_activation(name: str) -> Activation:
  """Returns the activation called `name` (case-insensitive).

  Args:
    name: one of relu, gelu (exact), approximated_gelu, swish/silu, relu6,
      hard_swish, hard_sigmoid, sigmoid, softmax (last axis), elu,
      identity/none/linear; other names go to `keras.activations.get`.

  Returns:
    A function mapping a float tensor to a tensor of the same shape.
  """
  if not isinstance(name, str):
    raise ValueError(f'activation must be a string, got {name!r}')
  key = name.lower()
  if key in _ACTIVATIONS:
    return _ACTIVATIONS[key]
  try:
    return keras.activations.get(key)
  except ValueError as error:
    raise ValueError(
        f'unknown activation {name!r}; valid: {sorted(_ACTIVATIONS)}') from error
