"""Activation recomputation (gradient checkpointing) of residual blocks, per model part.

Training memory is mostly activations kept for the backward pass. With
recomputation on for a model part, each residual block of that part keeps only
its input tensors; its inner activations are computed a second time, from those
inputs, when the block's gradient arrives (`tf.recompute_grad`). The cost is one
more forward pass of the part.

Who decides what:
* the trainer enables parts for the forward pass it traces:
  `with recompute.enabled(['pixel_encoder', 'pixel_decoder']): ...`
  (`trainer_options.solver_options.recompute_activations`);
* the meta architecture says which part it is tracing: `with model_part('pixel_encoder')`;
* residual blocks run their body through `recompute.call(fn, *tensors)`.

Outside `enabled()` (inference, export, evaluation) nothing changes. State is
thread-local, because tf.distribute traces each replica in a thread of its own.

Recomputing must not change what a step does:
* BatchNorm moving statistics are updated once per step: `BatchNormalization`
  below skips the update while a block is being recomputed;
* randomness (drop path) is drawn outside the recomputed function and passed in.
"""

import contextlib
import threading
from typing import Callable, Collection, Iterator

import tensorflow as tf

from kmax_tf.keras_setup import keras

PIXEL_ENCODER = 'pixel_encoder'
PIXEL_DECODER = 'pixel_decoder'
PARTS = (PIXEL_ENCODER, PIXEL_DECODER)

_STATE = threading.local()


def _get(name, default):
  value = getattr(_STATE, name, None)
  return default if value is None else value


@contextlib.contextmanager
def _set(name, value) -> Iterator[None]:
  previous = _get(name, None)
  setattr(_STATE, name, value)
  try:
    yield
  finally:
    setattr(_STATE, name, previous)


def check_parts(parts: Collection[str], field: str) -> None:
  """ValueError naming `field` unless every entry of `parts` is in PARTS."""
  unknown = sorted(set(parts) - set(PARTS))
  if unknown:
    raise ValueError(f'{field}: unknown model parts {unknown}; valid: {list(PARTS)}')


def enabled(parts: Collection[str]):
  """Context: residual blocks of `parts` (see PARTS) recompute their activations."""
  check_parts(parts, 'recompute.enabled')
  return _set('enabled', frozenset(parts))


def model_part(name: str):
  """Context: the layers called inside belong to model part `name`."""
  return _set('part', name)


def is_recomputing() -> bool:
  """True while a block's forward pass is traced again for its gradient."""
  return bool(_get('recomputing', False))


def call(fn: Callable[..., tf.Tensor], *tensors: tf.Tensor) -> tf.Tensor:
  """fn(*tensors); recomputed in the backward pass when the current part is enabled.

  Args:
    fn: a function of `tensors` only (close over Python values such as
      `training`); it may use layers and their variables, and must draw no
      random numbers.
    *tensors: its tensor arguments.

  Returns:
    fn's output tensor.
  """
  if _get('part', None) not in _get('enabled', ()):
    return fn(*tensors)
  calls = []

  def traced(*inputs):
    # tf.recompute_grad calls this once for the forward pass, then again for each gradient.
    calls.append(None)
    if len(calls) == 1:
      return fn(*inputs)
    with _set('recomputing', True):
      return fn(*inputs)

  return tf.recompute_grad(traced)(*tensors)


class BatchNormalization(keras.layers.BatchNormalization):
  """Keras BatchNormalization that leaves its moving statistics alone while recomputed.

  The object graph and checkpoint keys are Keras'.
  """

  def _assign_moving_average(self, variable, value, momentum, inputs_size):
    if is_recomputing():
      return tf.identity(variable)
    return super()._assign_moving_average(variable, value, momentum, inputs_size)

  def _assign_new_value(self, variable, value):
    if is_recomputing():
      return tf.identity(variable)
    return super()._assign_new_value(variable, value)
