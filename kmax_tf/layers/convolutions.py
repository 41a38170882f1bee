"""Convolutions with DeepLab2 padding, optional BatchNorm and activation.

Each wrapper owns its Keras conv as `_conv` (or `_depthwise_conv`) and its
normalization as `_batch_norm`; those attribute names are checkpoint path
components (`.../_conv1_bn_act/_conv/kernel`, `.../_batch_norm/gamma`).

`bn_layer` everywhere is a callable building a normalization layer from Keras
BatchNormalization keyword arguments (`axis`, `name`, `gamma_initializer`),
e.g. `functools.partial(keras.layers.BatchNormalization, synchronized=True,
momentum=0.99, epsilon=1e-3)`.
"""

from typing import Callable, Optional, Tuple

import tensorflow as tf

from kmax_tf.keras_setup import keras
from kmax_tf.layers import activations
from kmax_tf.layers import checkpoint_names

NormLayerFn = Callable[..., keras.layers.Layer]


def _padding_for(kernel_size: int, atrous_rate: int) -> Tuple[int, int]:
  """(begin, end) zero padding that centres a strided kernel like DeepLab2."""
  effective = kernel_size + (kernel_size - 1) * (atrous_rate - 1)
  total = effective - 1
  return total // 2, total - total // 2


def _is_unit_stride(strides) -> bool:
  if isinstance(strides, int):
    return strides == 1
  return tuple(strides) == (1, 1)


def kernel_regularizer(weight_decay: float):
  """L2 regularizer for conv kernels, or None when there is no weight decay."""
  return keras.regularizers.l2(weight_decay) if weight_decay else None


class Conv2DSame(keras.layers.Layer):
  """2D convolution + optional BatchNorm + optional activation.

  Strided convolutions pad explicitly and symmetrically (top-left aligned
  kernels), unlike Keras 'same' padding, as DeepLab2 does; stride 1 uses Keras
  'same' padding.

  Input: float [B, H, W, C_in]. Output: float [B, ceil(H/s), ceil(W/s), output_channels].
  """

  def __init__(self,
               output_channels: int,
               kernel_size: int,
               name: str,
               strides: int = 1,
               atrous_rate: int = 1,
               use_bias: bool = True,
               use_bn: bool = False,
               bn_layer: NormLayerFn = keras.layers.BatchNormalization,
               bn_gamma_initializer: str = 'ones',
               activation: Optional[str] = None,
               conv_kernel_weight_decay: float = 0.0):
    """Builds the layer.

    Args:
      output_channels: number of filters.
      kernel_size: square kernel size.
      name: layer name.
      strides: convolution stride.
      atrous_rate: dilation rate.
      use_bias: add a bias (not allowed together with use_bn).
      use_bn: apply `bn_layer` (on the channel axis) after the convolution.
      bn_layer: normalization layer factory, see the module docstring.
      bn_gamma_initializer: BN gamma initializer; 'zeros' for residual-branch ends.
      activation: activation name (see activations.get_activation) or None.
      conv_kernel_weight_decay: L2 weight decay of the kernel.
    """
    super().__init__(name=name)
    if use_bn and use_bias:
      raise ValueError(f'{name}: use_bias and use_bn cannot both be set')
    self._strides = strides
    self._use_bn = use_bn
    padding = 'same'
    if not _is_unit_stride(strides):
      pad = _padding_for(kernel_size, atrous_rate)
      self._zeropad = keras.layers.ZeroPadding2D(padding=(pad, pad), name='zeropad')
      padding = 'valid'
    self._conv = keras.layers.Conv2D(
        output_channels, kernel_size, strides=strides, padding=padding, use_bias=use_bias,
        dilation_rate=atrous_rate, name='conv', kernel_initializer='he_normal',
        kernel_regularizer=kernel_regularizer(conv_kernel_weight_decay))
    if use_bn:
      self._batch_norm = bn_layer(axis=3, name='batch_norm', gamma_initializer=bn_gamma_initializer)
    self._activation_fn = activations.get_activation(activation) if activation else None

  def call(self, inputs: tf.Tensor, training=False) -> tf.Tensor:
    x = inputs
    if not _is_unit_stride(self._strides):
      x = self._zeropad(x)
    x = self._conv(x)
    if self._use_bn:
      x = self._batch_norm(x, training=training)
    if self._activation_fn is not None:
      x = self._activation_fn(x)
    return x


class DepthwiseConv2DSame(keras.layers.Layer):
  """Depthwise 2D convolution + optional BatchNorm + activation (padding as Conv2DSame).

  Input: float [B, H, W, C]. Output: float [B, ceil(H/s), ceil(W/s), C].
  """

  def __init__(self,
               kernel_size: int,
               name: str,
               strides: int = 1,
               atrous_rate: int = 1,
               use_bias: bool = True,
               use_bn: bool = False,
               bn_layer: NormLayerFn = keras.layers.BatchNormalization,
               activation: Optional[str] = None):
    super().__init__(name=name)
    if use_bn and use_bias:
      raise ValueError(f'{name}: use_bias and use_bn cannot both be set')
    self._strides = strides
    self._use_bn = use_bn
    padding = 'same'
    if not _is_unit_stride(strides):
      pad = _padding_for(kernel_size, atrous_rate)
      self._zeropad = keras.layers.ZeroPadding2D(padding=(pad, pad), name='zeropad')
      padding = 'valid'
    self._depthwise_conv = keras.layers.DepthwiseConv2D(
        kernel_size=kernel_size, strides=strides, padding=padding, use_bias=use_bias,
        dilation_rate=atrous_rate, name='depthwise_conv')
    if use_bn:
      self._batch_norm = bn_layer(axis=3, name='batch_norm')
    self._activation_fn = activations.get_activation(activation) if activation else None

  def call(self, inputs: tf.Tensor, training=False) -> tf.Tensor:
    x = inputs
    if not _is_unit_stride(self._strides):
      x = self._zeropad(x)
    x = self._depthwise_conv(x)
    if self._use_bn:
      x = self._batch_norm(x, training=training)
    if self._activation_fn is not None:
      x = self._activation_fn(x)
    return x


class SeparableConv2DSame(keras.layers.Layer):
  """Depthwise conv (`_depthwise`) then 1x1 conv (`_pointwise`), each with BN/activation.

  Input: float [B, H, W, C]. Output: float [B, ceil(H/s), ceil(W/s), output_channels].
  """

  def __init__(self,
               output_channels: int,
               kernel_size: int,
               name: str,
               strides: int = 1,
               atrous_rate: int = 1,
               use_bias: bool = True,
               use_bn: bool = False,
               bn_layer: NormLayerFn = keras.layers.BatchNormalization,
               activation: Optional[str] = None):
    super().__init__(name=name)
    if use_bn and use_bias:
      raise ValueError(f'{name}: use_bias and use_bn cannot both be set')
    self._depthwise = DepthwiseConv2DSame(
        kernel_size=kernel_size, name='depthwise', strides=strides, atrous_rate=atrous_rate,
        use_bias=use_bias, use_bn=use_bn, bn_layer=bn_layer, activation=activation)
    self._pointwise = Conv2DSame(
        output_channels=output_channels, kernel_size=1, name='pointwise', use_bias=use_bias,
        use_bn=use_bn, bn_layer=bn_layer, activation=activation)

  def call(self, inputs: tf.Tensor, training=False) -> tf.Tensor:
    return self._pointwise(self._depthwise(inputs, training=training), training=training)


class StackedConv2DSame(keras.layers.Layer):
  """`num_layers` identical Conv2DSame or SeparableConv2DSame layers in sequence.

  Children are `_conv{i}[_bn][_act]` (i from 1). Input: float [B, H, W, C];
  output: float [B, H', W', output_channels].
  """

  def __init__(self,
               num_layers: int,
               conv_type: str,
               output_channels: int,
               kernel_size: int,
               name: str,
               strides: int = 1,
               atrous_rate: int = 1,
               use_bias: bool = True,
               use_bn: bool = False,
               bn_layer: NormLayerFn = keras.layers.BatchNormalization,
               activation: Optional[str] = None):
    """Builds the stack; conv_type is 'standard_conv' or 'depthwise_separable_conv'."""
    super().__init__(name=name)
    conv_classes = {'standard_conv': Conv2DSame, 'depthwise_separable_conv': SeparableConv2DSame}
    if conv_type not in conv_classes:
      raise ValueError(f'{name}: conv_type must be one of {sorted(conv_classes)}, '
                       f'got {conv_type!r}')
    self._attributes = []
    for index in range(num_layers):
      attribute = checkpoint_names.stacked_conv_attribute(index, use_bn, activation)
      checkpoint_names.set_checkpoint_child(self, attribute, conv_classes[conv_type](
          output_channels=output_channels, kernel_size=kernel_size,
          name=checkpoint_names.layer_name(attribute), strides=strides, atrous_rate=atrous_rate,
          use_bias=use_bias, use_bn=use_bn, bn_layer=bn_layer, activation=activation))
      self._attributes.append(attribute)

  def call(self, inputs: tf.Tensor, training=False) -> tf.Tensor:
    x = inputs
    for attribute in self._attributes:
      x = getattr(self, attribute)(x, training=training)
    return x


class Conv1D(keras.layers.Layer):
  """1D convolution (kernel 1 by default) + optional BatchNorm + activation.

  Used on sequences such as cluster centres. Input: float [B, L, C_in].
  Output: float [B, L, output_channels].
  """

  def __init__(self,
               output_channels: int,
               name: str,
               use_bias: bool = True,
               use_bn: bool = False,
               bn_layer: NormLayerFn = keras.layers.BatchNormalization,
               bn_gamma_initializer: str = 'ones',
               activation: Optional[str] = None,
               conv_kernel_weight_decay: float = 0.0,
               kernel_initializer='he_normal',
               kernel_size: int = 1,
               padding: str = 'valid'):
    super().__init__(name=name)
    if use_bn and use_bias:
      raise ValueError(f'{name}: use_bias and use_bn cannot both be set')
    self._conv = keras.layers.Conv1D(
        output_channels, kernel_size=kernel_size, strides=1, padding=padding, use_bias=use_bias,
        name='conv', kernel_initializer=kernel_initializer,
        kernel_regularizer=kernel_regularizer(conv_kernel_weight_decay))
    self._batch_norm = None
    if use_bn:
      self._batch_norm = bn_layer(axis=2, name='batch_norm', gamma_initializer=bn_gamma_initializer)
    self._activation_fn = activations.get_activation(activation) if activation else None

  def call(self, inputs: tf.Tensor, training=False) -> tf.Tensor:
    x = self._conv(inputs)
    if self._batch_norm is not None:
      x = self._batch_norm(x, training=training)
    if self._activation_fn is not None:
      x = self._activation_fn(x)
    return x
