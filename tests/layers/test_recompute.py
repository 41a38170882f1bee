"""Tests for kmax_tf/layers/recompute.py: same step, fewer kept activations."""

import functools

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf.layers import axial_block_groups
from kmax_tf.layers import recompute
from kmax_tf.model.pixel_encoder import convnext
from tests.helpers import backward_tensors

_BN = functools.partial(recompute.BatchNormalization, synchronized=True, momentum=0.9)


def _group(drop_path_keep_prob=1.0, **kwargs):
  # Bottleneck block, then two axial-attention blocks (input stride 16), BatchNorm everywhere.
  defaults = dict(filters=4, num_blocks=3, name='group', original_resnet_stride=1,
                  original_resnet_input_stride=16, output_stride=16, backbone_type='resnet_beta',
                  use_axial_beyond_stride=16, use_transformer_beyond_stride=0,
                  drop_path_keep_prob=drop_path_keep_prob, drop_path_beyond_stride=16,
                  drop_path_schedule='constant', activation='gelu', bn_layer=_BN,
                  axial_layer_config=dict(query_shape=(9, 9), key_expansion=1,
                                          value_expansion=2, num_heads=2))
  defaults.update(kwargs)
  return axial_block_groups.BlockGroup(**defaults)


def _step(layer, x, parts, part=recompute.PIXEL_ENCODER):
  """(output, d sum(output^2) / d [x, variables]) of one training-mode call."""

  @tf.function
  def run(x):
    with tf.GradientTape() as tape, recompute.enabled(parts), recompute.model_part(part):
      tape.watch(x)
      output = layer((x, None), training=True)[0]
      loss = tf.reduce_sum(tf.square(output))
    gradients = tape.gradient(loss, [x] + layer.trainable_variables)
    return output, [tf.convert_to_tensor(g) for g in gradients]

  return run(x)


def _randomize(layer):
  # Zero-initialised BatchNorm scales would hide the residual branches.
  for index, variable in enumerate(layer.trainable_variables):
    variable.assign(tf.random.stateless_normal(variable.shape, seed=[index, 7]) * 0.3 +
                    (1.0 if 'gamma' in variable.name else 0.0))


def _moving_statistics(layer):
  return [v.numpy() for v in layer.non_trainable_variables]


def test_block_group_gradients_and_batch_norm_statistics_unchanged():
  x = tf.random.stateless_normal([2, 9, 9, 16], seed=[1, 2])
  plain, recomputed = _group(), _group()
  plain((x, None))
  recomputed((x, None))
  _randomize(plain)
  recomputed.set_weights(plain.get_weights())
  before = _moving_statistics(plain)

  output, gradients = _step(plain, x, parts=())
  output_r, gradients_r = _step(recomputed, x, parts=[recompute.PIXEL_ENCODER])

  np.testing.assert_allclose(output_r, output, rtol=1e-5, atol=1e-5)
  assert len(gradients_r) == len(gradients) == 1 + len(plain.trainable_variables)
  for variable, grad, grad_r in zip(['x'] + plain.trainable_variables, gradients, gradients_r):
    np.testing.assert_allclose(grad_r, grad, rtol=1e-4, atol=1e-5, err_msg=str(variable))
  # Each moving statistic moved once (momentum 0.9), not twice.
  moved = [np.abs(a - b).max() for a, b in zip(_moving_statistics(plain), before)]
  assert min(moved) > 1e-4
  for after_r, after in zip(_moving_statistics(recomputed), _moving_statistics(plain)):
    np.testing.assert_allclose(after_r, after, rtol=1e-5, atol=1e-6)


def test_only_the_enabled_part_recomputes():
  x = tf.random.stateless_normal([1, 9, 9, 16], seed=[3, 4])

  def kept_bytes(parts, part):
    group = _group(num_blocks=2)
    group((x, None))

    def loss(value):
      with recompute.enabled(parts), recompute.model_part(part):
        return tf.reduce_sum(group((value, None), training=True)[0])

    return sum(t.shape.num_elements() * t.dtype.size
               for t in backward_tensors.kept_for_gradient(loss, x))

  plain = kept_bytes((), recompute.PIXEL_DECODER)
  assert kept_bytes([recompute.PIXEL_ENCODER], recompute.PIXEL_DECODER) == plain
  # Recomputed, the two blocks keep their inputs and little else.
  assert kept_bytes([recompute.PIXEL_DECODER], recompute.PIXEL_DECODER) < plain / 4


@pytest.mark.parametrize('make', [
    lambda: _group(drop_path_keep_prob=0.5, num_blocks=1, use_axial_beyond_stride=0),
    lambda: convnext.ConvNeXtBlock(16, drop_path_keep_prob=0.5),
], ids=['block_group', 'convnext_block'])
def test_drop_path_draws_once(make):
  # With batch 1 and keep probability 0.5 a step either drops the residual branch (the
  # output is the shortcut, the branch's weights get no gradient) or keeps it. A second draw in
  # the recomputation would break that agreement in half of the steps.
  layer = make()
  x = tf.random.stateless_normal([1, 9, 9, 16], seed=[5, 6])
  is_group = isinstance(layer, axial_block_groups.BlockGroup)

  @tf.function
  def run():
    with tf.GradientTape() as tape, recompute.enabled([recompute.PIXEL_ENCODER]), \
        recompute.model_part(recompute.PIXEL_ENCODER):
      output = layer((x, None), training=True)[0] if is_group else layer(x, training=True)
      loss = tf.reduce_sum(output)
    return output, tape.gradient(loss, layer.trainable_variables)

  run()
  _randomize(layer)
  if is_group:
    # 16 channels in and out: no shortcut conv, the block's output is gelu(x) + branch.
    branch = layer._block1._conv1_bn_act._conv.kernel
    shortcut = tf.nn.gelu(x, approximate=False)
  else:
    branch, shortcut = layer.depthwise_conv.kernel, x
  index = [v.ref() for v in layer.trainable_variables].index(branch.ref())
  outcomes = set()
  for _ in range(12):
    output, gradients = run()
    dropped = not np.any(gradients[index].numpy())
    assert dropped == np.allclose(output, shortcut, atol=1e-6), 'forward and gradient disagree'
    outcomes.add(dropped)
  assert outcomes == {True, False}


def test_unknown_part_is_named():
  with pytest.raises(ValueError, match=r"field: unknown model parts \['encoder'\]"):
    recompute.check_parts(['encoder', 'pixel_decoder'], 'field')
