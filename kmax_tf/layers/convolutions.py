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

from kmax_tf import backend
from kmax_tf.keras_setup import keras
from kmax_tf.layers import activations
from kmax_tf.layers import checkpoint_names
from kmax_tf.layers import fused_inference
from kmax_tf.layers import lean_normalization

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


def _batch_norm_and_activation(layer: keras.layers.Layer, x: tf.Tensor, training) -> tf.Tensor:
  """The optional `_batch_norm` then `_activation_fn` of a conv wrapper, fused when possible."""
  if layer._use_bn:
    fused = fused_inference.batch_norm_activation(
        x, layer._batch_norm, training, layer._activation)
    if fused is not None:
      return fused
    if (layer._activation or '').lower() == 'gelu':
      lean = lean_normalization.batch_norm_gelu(layer._batch_norm, x, training)
      if lean is not None:
        return lean
    x = layer._batch_norm(x, training=training)
  if layer._activation_fn is not None:
    x = layer._activation_fn(x)
  return x


def _depthwise_by_shifted_sums(x: tf.Tensor, kernel: tf.Tensor, stride: int, dilation: int,
                               padding: str) -> tf.Tensor:
  """Depthwise convolution as k * k shifted multiply-adds (for XLA).

  XLA on CPU lowers depthwise (feature-grouped) convolutions to a very slow
  loop (about 60x slower than oneDNN at 161x161x256); k * k slices fuse into a
  single elementwise loop instead.

  Args:
    x: float [B, H, W, C] with static H, W.
    kernel: float [k, k, C, 1].
    stride: spatial stride.
    dilation: dilation rate.
    padding: 'same' or 'valid' (TensorFlow semantics).

  Returns:
    float [B, H', W', C].
  """
  size = kernel.shape[0]
  effective = (size - 1) * dilation + 1
  _, height, width, _ = x.shape.as_list()
  if padding.lower() == 'same':
    out_height, out_width = -(-height // stride), -(-width // stride)
    pad_height = max((out_height - 1) * stride + effective - height, 0)
    pad_width = max((out_width - 1) * stride + effective - width, 0)
    x = tf.pad(x, [[0, 0], [pad_height // 2, pad_height - pad_height // 2],
                   [pad_width // 2, pad_width - pad_width // 2], [0, 0]])
  else:
    out_height = (height - effective) // stride + 1
    out_width = (width - effective) // stride + 1
  output = None
  for row in range(size):
    for column in range(size):
      top, left = row * dilation, column * dilation
      window = x[:, top:top + (out_height - 1) * stride + 1:stride,
                 left:left + (out_width - 1) * stride + 1:stride, :]
      term = window * kernel[row, column, :, 0]
      output = term if output is None else output + term
  return output


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
      # Padded inside the convolution op: a padded copy of the input would be
      # kept for the backward pass beside the input itself.
      pad = list(_padding_for(kernel_size, atrous_rate))
      self._explicit_padding = [[0, 0], pad, pad, [0, 0]]
      padding = 'valid'
    self._conv = keras.layers.Conv2D(
        output_channels, kernel_size, strides=strides, padding=padding, use_bias=use_bias,
        dilation_rate=atrous_rate, name='conv', kernel_initializer='he_normal',
        kernel_regularizer=kernel_regularizer(conv_kernel_weight_decay))
    if use_bn:
      self._batch_norm = bn_layer(axis=3, name='batch_norm', gamma_initializer=bn_gamma_initializer)
    self._activation = activation
    self._activation_fn = activations.get_activation(activation) if activation else None

  def build(self, input_shape):
    # The Keras layer owns the weights; strided convolutions are run by `call`.
    with tf.name_scope(self._conv.name):
      self._conv.build(tf.TensorShape(input_shape))
    super().build(input_shape)

  def call(self, inputs: tf.Tensor, training=False) -> tf.Tensor:
    if _is_unit_stride(self._strides):
      x = self._conv(inputs)
    else:
      conv = self._conv
      x = tf.nn.conv2d(inputs, tf.cast(conv.kernel, inputs.dtype), conv.strides,
                       self._explicit_padding, dilations=conv.dilation_rate)
      if conv.use_bias:
        x = tf.nn.bias_add(x, tf.cast(conv.bias, x.dtype))
    return _batch_norm_and_activation(self, x, training)


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
    self._activation = activation
    self._activation_fn = activations.get_activation(activation) if activation else None

  def build(self, input_shape):
    input_shape = tf.TensorShape(input_shape)
    if not _is_unit_stride(self._strides):
      input_shape = self._zeropad.compute_output_shape(input_shape)
    # The Keras layer only owns the weights (checkpoint layout: `depthwise_kernel`
    # [k, k, C, 1], `bias`); `call` runs the convolution itself. Its name scope
    # keeps the variable names it gets when it builds itself.
    with tf.name_scope(self._depthwise_conv.name):
      self._depthwise_conv.build(input_shape)
    super().build(input_shape)

  def _convolve(self, x: tf.Tensor, training) -> tf.Tensor:
    """Depthwise convolution of x: float [B, H, W, C] with the Keras layer's weights."""
    layer = self._depthwise_conv
    kernel = tf.cast(layer.depthwise_kernel, x.dtype)
    formulation = backend.depthwise_kernel(training, layer.dilation_rate)
    if formulation == backend.DEPTHWISE_BY_SHIFTED_SUMS:
      x = _depthwise_by_shifted_sums(x, kernel, layer.strides[0], layer.dilation_rate[0],
                                     layer.padding)
    elif formulation == backend.DEPTHWISE_BY_GROUPED_CONV:
      # A grouped convolution (one group per channel) gives the same values as
      # DepthwiseConv2dNative, bit for bit (undilated), and runs 1.3-2x faster
      # with oneDNN (without it, CPU TensorFlow has no grouped-conv gradients).
      size, _, channels, _ = kernel.shape.as_list()
      x = tf.nn.conv2d(x, tf.reshape(kernel, [size, size, 1, channels]), layer.strides,
                       layer.padding.upper(), dilations=layer.dilation_rate)
    else:
      x = tf.nn.depthwise_conv2d(x, kernel, [1, *layer.strides, 1], layer.padding.upper(),
                                 dilations=layer.dilation_rate)
    if layer.use_bias:
      x = tf.nn.bias_add(x, tf.cast(layer.bias, x.dtype))
    return x

  def call(self, inputs: tf.Tensor, training=False) -> tf.Tensor:
    x = inputs
    if not _is_unit_stride(self._strides):
      x = self._zeropad(x)
    x = self._convolve(x, training)
    return _batch_norm_and_activation(self, x, training)


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
    self._use_bn = use_bn
    if use_bn:
      self._batch_norm = bn_layer(axis=2, name='batch_norm', gamma_initializer=bn_gamma_initializer)
    self._activation = activation
    self._activation_fn = activations.get_activation(activation) if activation else None

  def call(self, inputs: tf.Tensor, training=False) -> tf.Tensor:
    return _batch_norm_and_activation(self, self._conv(inputs), training)
