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


def computed_before_upstream_gradient(loss_fn: Callable[[tf.Tensor], tf.Tensor],
                                      x: tf.Tensor) -> List[tf.Tensor]:
  """Outputs of backward-pass ops of d loss / d x that do not wait for d loss.

  The executor may run such an op during the forward pass and then hold its
  output until the backward pass: a recomputation among them saves no memory.
  """

  @tf.function
  def step(value, upstream):
    with tf.GradientTape() as tape:
      tape.watch(value)
      loss = loss_fn(value)
    return loss, tape.gradient(loss, value, output_gradients=upstream)

  graph = step.get_concrete_function(x, tf.TensorSpec([], x.dtype)).graph
  loss, gradient = graph.structured_outputs
  upstream = graph.inputs[1].op
  forward = _ancestors(loss.op)
  backward = _ancestors(gradient.op, with_control=True) - forward
  return [t for op in backward
          if upstream not in _ancestors(op, with_control=True) for t in op.outputs]


def _ancestors(op: tf.Operation, with_control: bool = False) -> set:
  """`op` and every op it depends on (by data, and by control too if asked)."""
  found, pending = set(), [op]
  while pending:
    op = pending.pop()
    if op not in found:
      found.add(op)
      pending.extend(t.op for t in op.inputs)
      if with_control:
        pending.extend(op.control_inputs)
  return found
