"""A group of residual blocks at one resolution, optionally each followed by a transformer layer.

The stride, dilation, block type and drop-path rate of every block follow from
where the group sits in a ResNet (its `original_resnet_input_stride`) and the
network's `output_stride`, as in DeepLab2's Axial-ResNet / MaX-DeepLab:

* the group's stride is applied in its first block, unless that would exceed
  `output_stride`; beyond it, spatial convolutions are dilated instead;
* blocks whose (original ResNet) input stride is >= `use_axial_beyond_stride`
  are axial-attention blocks, others are bottlenecks;
* blocks at stride >= `drop_path_beyond_stride` get drop path with the keep
  probability of `drop_path_schedule`.

References: H. Wang et al., Axial-DeepLab, ECCV 2020; H. Wang et al.,
MaX-DeepLab, CVPR 2021.
"""

import math
from typing import Callable, Optional

from kmax_tf.keras_setup import keras
from kmax_tf.layers import axial_blocks
from kmax_tf.layers import checkpoint_names
from kmax_tf.layers import drop_path
from kmax_tf.layers import recompute
from kmax_tf.layers.convolutions import NormLayerFn

# transformer_layer_fn(name=..., drop_path_keep_prob=...) -> layer, see BlockGroup.
TransformerLayerFn = Callable[..., keras.layers.Layer]


def _is_power_of_two(value: int) -> bool:
  return value > 0 and not value & (value - 1)


def _run_block(block, features, drop_path_mask, training):
  """block(features), through `recompute.call` (the random mask is drawn outside it)."""
  if drop_path_mask is None:
    return recompute.call(lambda x: block(x, training=training), features)
  return recompute.call(lambda x, mask: block(x, training=training, drop_path_mask=mask),
                        features, drop_path_mask)


class BlockGroup(keras.layers.Layer):
  """`num_blocks` residual blocks `_block{i}`, each optionally followed by `_block{i}_transformer`.

  Call with `(features, memory)` or `(features, memory, auxiliary_outputs)`:
    features: float [B, H, W, C], not activated;
    memory: None or float [B, N, D] memory/cluster-centre features (only used
      by transformer layers);
    auxiliary_outputs: tuple of per-layer prediction dicts (transformer layers append).
  Returns the same structure: features [B, H', W', 4 * filters] (not
  activated), memory, [auxiliary_outputs].

  Transformer layers are built by `transformer_layer_fn(name='block{i}_transformer',
  drop_path_keep_prob=p)` for blocks at stride >= `use_transformer_beyond_stride` > 0.
  Such a layer is called as `layer((features, memory, auxiliary_outputs),
  training=training)` and returns `(features, memory, auxiliary_outputs)`; it
  draws its own drop-path masks from `p`.
  """

  def __init__(self,
               filters: int,
               num_blocks: int,
               name: str,
               original_resnet_stride: int,
               original_resnet_input_stride: int,
               output_stride: int = 16,
               backbone_type: str = 'resnet_beta',
               use_axial_beyond_stride: int = 16,
               use_transformer_beyond_stride: int = 32,
               transformer_layer_fn: Optional[TransformerLayerFn] = None,
               drop_path_keep_prob: float = 0.8,
               drop_path_beyond_stride: int = 16,
               drop_path_schedule: str = 'constant',
               activation: str = 'relu',
               attention_bottleneck_expansion: int = 2,
               axial_layer_config: Optional[dict] = None,
               bn_layer: NormLayerFn = keras.layers.BatchNormalization,
               conv_kernel_weight_decay: float = 0.0,
               use_axial_block: bool = True):
    """Builds the group.

    Args:
      filters: base width; bottleneck blocks output 4 * filters channels.
      num_blocks: number of residual blocks.
      name: layer name.
      original_resnet_stride: stride of this group in the original ResNet (1 or 2).
      original_resnet_input_stride: total input stride of this group in the
        original ResNet (power of two).
      output_stride: largest stride the network may reach (power of two).
      backbone_type: 'resnet' / 'resnet_beta' (bottlenecks) or 'wider_resnet'.
      use_axial_beyond_stride: axial blocks at input stride >= this (0: never).
      use_transformer_beyond_stride: transformer layers at stride >= this (0: never).
      transformer_layer_fn: builds transformer layers (required if any is used).
      drop_path_keep_prob: keep probability of the last stage.
      drop_path_beyond_stride: drop path only at stride >= this.
      drop_path_schedule: 'constant' or 'linear' over 4 stages.
      activation: activation name.
      attention_bottleneck_expansion: 1x1 expansion of axial blocks.
      axial_layer_config: extra AxialAttention2D keyword arguments.
      bn_layer: normalization layer factory (see convolutions).
      conv_kernel_weight_decay: L2 weight decay of conv kernels.
      use_axial_block: False builds no residual blocks (transformer layers only).
    """
    if not _is_power_of_two(original_resnet_input_stride):
      raise ValueError(f'{name}: original_resnet_input_stride must be a power of 2, '
                       f'got {original_resnet_input_stride}')
    if not _is_power_of_two(output_stride):
      raise ValueError(f'{name}: output_stride must be a power of 2, got {output_stride}')
    super().__init__(name=name)
    self._num_blocks = num_blocks
    self._use_axial_block = use_axial_block
    self._drop_path_keep_probs = []
    current_stride = original_resnet_input_stride
    for index in range(num_blocks):
      strides = (original_resnet_stride
                 if index == 0 and original_resnet_input_stride < output_stride else 1)
      atrous_rate = current_stride // output_stride if current_stride > output_stride else 1
      if index == 0 and original_resnet_input_stride * original_resnet_stride > output_stride:
        second_conv_atrous_rate = (
            original_resnet_input_stride * original_resnet_stride // output_stride)
      else:
        second_conv_atrous_rate = atrous_rate

      keep_prob = 1.0
      if current_stride >= drop_path_beyond_stride:
        keep_prob = drop_path.keep_prob_for_stage(
            drop_path_keep_prob, drop_path_schedule,
            current_stage=int(round(math.log2(current_stride) - 1)), num_stages=4)
      self._drop_path_keep_probs.append(keep_prob)

      attention_type = None
      if current_stride >= use_axial_beyond_stride > 0:
        attention_type = 'axial'
        filters_list = [filters * attention_bottleneck_expansion, filters, filters * 4]
      elif backbone_type in ('resnet', 'resnet_beta'):
        filters_list = [filters, filters, filters * 4]
      elif backbone_type == 'wider_resnet':
        if original_resnet_input_stride * original_resnet_stride < 32:
          filters_list = [filters * 4, filters * 4]
        else:
          filters_list = [filters, filters * 2, filters * 4]
      else:
        raise ValueError(f'{name}: backbone_type must be resnet, resnet_beta or wider_resnet, '
                         f'got {backbone_type!r}')

      block = None
      if use_axial_block:
        block = axial_blocks.AxialBlock(
            filters_list, kernel_size=3, strides=strides, atrous_rate=atrous_rate,
            bn_layer=bn_layer, activation=activation,
            name=checkpoint_names.layer_name(checkpoint_names.block_attribute(index)),
            conv_kernel_weight_decay=conv_kernel_weight_decay,
            basic_block_second_conv_atrous_rate=second_conv_atrous_rate,
            attention_type=attention_type, axial_layer_config=axial_layer_config)
      checkpoint_names.set_checkpoint_child(self, checkpoint_names.block_attribute(index), block)

      if index == 0 and original_resnet_stride > 1:
        current_stride *= original_resnet_stride
      transformer = None
      if current_stride >= use_transformer_beyond_stride > 0:
        if transformer_layer_fn is None:
          raise ValueError(f'{name}: transformer layers requested (use_transformer_beyond_stride='
                           f'{use_transformer_beyond_stride}) but transformer_layer_fn is None')
        attribute = checkpoint_names.transformer_attribute(index)
        transformer = transformer_layer_fn(
            name=checkpoint_names.layer_name(attribute), drop_path_keep_prob=keep_prob)
      checkpoint_names.set_checkpoint_child(
          self, checkpoint_names.transformer_attribute(index), transformer)

  @property
  def drop_path_keep_probs(self):
    """Keep probability of each block's residual branch (1.0: no drop path)."""
    return tuple(self._drop_path_keep_probs)

  def call(self, inputs, training=False):
    """See the class docstring for inputs and outputs."""
    if len(inputs) == 2:
      features, memory = inputs
      auxiliary_outputs, return_auxiliary = (), False
    elif len(inputs) == 3:
      features, memory, auxiliary_outputs = inputs
      return_auxiliary = True
    else:
      raise ValueError(f'{self.name}: inputs must be (features, memory[, auxiliary_outputs])')

    for index in range(self._num_blocks):
      block = getattr(self, checkpoint_names.block_attribute(index))
      if block is not None:
        mask = None
        if self._drop_path_keep_probs[index] < 1.0 and training:
          mask = drop_path.random_keep_mask(features, self._drop_path_keep_probs[index])
        features = _run_block(block, features, mask, training)
      transformer = getattr(self, checkpoint_names.transformer_attribute(index))
      if transformer is not None:
        features, memory, auxiliary_outputs = transformer(
            (features, memory, auxiliary_outputs), training=training)

    if return_auxiliary:
      return features, memory, auxiliary_outputs
    return features, memory
