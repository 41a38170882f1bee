"""Which forward tensors a gradient reads (what the backward pass keeps alive)."""

from typing import Callable, List

import tensorflow as tf


def kept_for_gradient(loss_fn: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor) -> List[tf.Tensor]:
  """Tensors of the forward pass of `loss_fn(x)` (a scalar) read by d loss / d x."""

  @tf.function
  def step(value):
    with tf.GradientTape() as tape:
      tape.watch(value)
      loss = loss_fn(value)
    return loss, tape.gradient(loss, value)

  loss, gradient = step.get_concrete_function(x).graph.structured_outputs
  forward = _ancestors(loss.op)
  backward = _ancestors(gradient.op) - forward
  return [t for op in forward for t in op.outputs if any(c in backward for c in t.consumers())]


def _ancestors(op: tf.Operation) -> set:
  """`op` and every op it depends on."""
  found, pending = set(), [op]
  while pending:
    op = pending.pop()
    if op not in found:
      found.add(op)
      pending.extend(t.op for t in op.inputs)
  return found
