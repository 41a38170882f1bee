"""Residual blocks: bottleneck, basic, and axial-attention bottleneck.

References: K. He et al., Deep Residual Learning for Image Recognition, CVPR
2016; H. Wang et al., Axial-DeepLab, ECCV 2020 (the 3x3 convolution of a
bottleneck replaced by height- and width-axis attention).
"""

from typing import Optional, Sequence

import tensorflow as tf

from kmax_tf.keras_setup import keras
from kmax_tf.layers import activations
from kmax_tf.layers import axial_layers
from kmax_tf.layers import convolutions
from kmax_tf.layers import fused_inference
from kmax_tf.layers.convolutions import NormLayerFn


class AxialBlock(keras.layers.Layer):
  """One residual block; its input is the *non-activated* previous output.

  The block activates its input, runs the residual branch, multiplies it by an
  optional drop-path mask and adds the (projected) shortcut. The output is not
  activated.

  * 3 filters, attention_type None: bottleneck 1x1 (`_conv1_bn_act`) - 3x3
    (`_conv2_bn_act`) - 1x1 (`_conv3_bn`).
  * 3 filters, attention_type 'axial': 1x1 - AxialAttention2D (`_attention`)
    - activation - 1x1.
  * 2 filters: basic block 3x3 (`_conv1_bn_act`) - 3x3 (`_conv2_bn`).
  The last BN of the branch starts with gamma = 0. A 1x1 `_shortcut` conv+BN is
  created when the channel count changes.

  Input: float [B, H, W, C]. Output: float [B, ceil(H/s), ceil(W/s), filters_list[-1]].
  """

  def __init__(self,
               filters_list: Sequence[int],
               kernel_size: int = 3,
               strides: int = 1,
               atrous_rate: int = 1,
               bn_layer: NormLayerFn = keras.layers.BatchNormalization,
               activation: str = 'relu',
               name: Optional[str] = None,
               conv_kernel_weight_decay: float = 0.0,
               basic_block_second_conv_atrous_rate: Optional[int] = None,
               attention_type: Optional[str] = None,
               axial_layer_config: Optional[dict] = None):
    """Builds the block.

    Args:
      filters_list: [1x1, middle, output] filters (bottleneck/axial) or
        [first, second] filters (basic block).
      kernel_size: spatial kernel size of the 3x3 convolutions.
      strides: block stride, applied by the first spatial operation and the shortcut.
      atrous_rate: dilation of the spatial convolution(s).
      bn_layer: normalization layer factory (see convolutions).
      activation: activation name.
      name: layer name.
      conv_kernel_weight_decay: L2 weight decay of the conv kernels.
      basic_block_second_conv_atrous_rate: dilation of the basic block's second
        conv (defaults to atrous_rate).
      attention_type: None/'none' (convolution) or 'axial'.
      axial_layer_config: extra AxialAttention2D keyword arguments.
    """
    super().__init__(name=name)
    self._filters_list = list(filters_list)
    self._strides = strides
    self._bn_layer = bn_layer
    self._activation = activation
    self._activation_fn = activations.get_activation(activation)
    self._conv_kernel_weight_decay = conv_kernel_weight_decay
    if attention_type is not None and attention_type.lower() == 'none':
      attention_type = None
    if attention_type not in (None, 'axial'):
      raise ValueError(f"{name}: attention_type must be None or 'axial', got {attention_type!r}")
    self._attention_type = attention_type
    if basic_block_second_conv_atrous_rate is None:
      basic_block_second_conv_atrous_rate = atrous_rate
    conv = lambda *args, **kwargs: convolutions.Conv2DSame(
        *args, use_bias=False, use_bn=True, bn_layer=bn_layer,
        conv_kernel_weight_decay=conv_kernel_weight_decay, **kwargs)

    if len(self._filters_list) == 3:
      self._conv1_bn_act = conv(self._filters_list[0], 1, 'conv1_bn_act', activation=activation)
      if attention_type is None:
        self._conv2_bn_act = conv(self._filters_list[1], kernel_size, 'conv2_bn_act',
                                  strides=strides, atrous_rate=atrous_rate, activation=activation)
      else:
        self._attention = axial_layers.AxialAttention2D(
            strides=strides, filters=self._filters_list[1], name='attention', bn_layer=bn_layer,
            conv_kernel_weight_decay=conv_kernel_weight_decay, **(axial_layer_config or {}))
      # Zero-initialised gamma: each residual block starts as the identity.
      self._conv3_bn = conv(self._filters_list[2], 1, 'conv3_bn', bn_gamma_initializer='zeros',
                            activation='none')
    elif len(self._filters_list) == 2:
      self._conv1_bn_act = conv(self._filters_list[0], kernel_size, 'conv1_bn_act',
                                strides=strides, atrous_rate=atrous_rate, activation=activation)
      self._conv2_bn = conv(self._filters_list[1], kernel_size, 'conv2_bn',
                            atrous_rate=basic_block_second_conv_atrous_rate,
                            bn_gamma_initializer='zeros', activation='none')
    else:
      raise ValueError(f'{name}: filters_list must have 2 or 3 entries, got {filters_list}')

  def build(self, input_shape):
    self._shortcut = None
    if input_shape[-1] != self._filters_list[-1]:
      self._shortcut = convolutions.Conv2DSame(
          self._filters_list[-1], 1, 'shortcut', strides=self._strides, use_bias=False,
          use_bn=True, bn_layer=self._bn_layer, activation='none',
          conv_kernel_weight_decay=self._conv_kernel_weight_decay)
    super().build(input_shape)

  def _activate(self, x: tf.Tensor, training) -> tf.Tensor:
    fused = fused_inference.activation(x, training, self._activation)
    return self._activation_fn(x) if fused is None else fused

  def call(self, inputs: tf.Tensor, training=False,
           drop_path_mask: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Runs the block.

    Args:
      inputs: float [B, H, W, C], not activated.
      training: training mode (BatchNorm statistics).
      drop_path_mask: optional float [B, 1, 1, 1] multiplier of the residual branch.

    Returns:
      float [B, H', W', filters_list[-1]], not activated.
    """
    x = self._activate(inputs, training)
    shortcut = x
    if self._shortcut is not None:
      shortcut = self._shortcut(shortcut, training=training)
    elif self._strides != 1:
      shortcut = shortcut[:, ::self._strides, ::self._strides, :]

    if len(self._filters_list) == 3:
      x = self._conv1_bn_act(x, training=training)
      if self._attention_type is None:
        x = self._conv2_bn_act(x, training=training)
      else:
        x = self._activate(self._attention(x, training=training), training)
      x = self._conv3_bn(x, training=training)
    else:
      x = self._conv2_bn(self._conv1_bn_act(x, training=training), training=training)

    if drop_path_mask is not None:
      x = x * drop_path_mask
    return x + shortcut
