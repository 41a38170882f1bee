"""Activation functions by DeepLab2 name ('relu', 'gelu', 'none', ...)."""

import functools
from typing import Callable

import tensorflow as tf

from kmax_tf.keras_setup import keras

Activation = Callable[[tf.Tensor], tf.Tensor]


def _identity(x: tf.Tensor) -> tf.Tensor:
  return tf.identity(x)


def _hard_sigmoid(x: tf.Tensor) -> tf.Tensor:
  return tf.nn.relu6(x + 3.0) * 0.16667


def _hard_swish(x: tf.Tensor) -> tf.Tensor:
  return x * tf.nn.relu6(x + 3.0) * (1.0 / 6.0)


# GeLU is the exact erf form unless 'approximated_gelu' is asked for, as in DeepLab2.
_ACTIVATIONS = {
    'relu': tf.nn.relu,
    'gelu': functools.partial(tf.nn.gelu, approximate=False),
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
