"""Fuses features of different resolutions and widths into one map by summation.

Reference: H. Wang et al., MaX-DeepLab: End-to-End Panoptic Segmentation with
Mask Transformers, CVPR 2021.
"""

from typing import Sequence

import tensorflow as tf

from kmax_tf.keras_setup import keras
from kmax_tf.layers import activations
from kmax_tf.layers import checkpoint_names
from kmax_tf.layers import convolutions
from kmax_tf.layers import fused_inference
from kmax_tf.layers import resize
from kmax_tf.layers.convolutions import NormLayerFn


class ResizedFuse(keras.layers.Layer):
  """Brings every input to [height, width, num_channels] and sums them.

  Per input i (1-based), decided from its static shape when the layer is built:
  * already num_channels wide: bilinear (align-corners) resize only;
  * exactly twice the target size (ceil): activation + stride-2 1x1 conv + BN
    (`_strided_conv_bn{i}`);
  * otherwise: activation + 1x1 conv + BN (`_resized_conv_bn{i}`), then resize.

  Input: list of float [B, H_i, W_i, C_i] tensors. Output: float [B, height, width, num_channels].
  """

  def __init__(self,
               name: str,
               height: int,
               width: int,
               num_channels: int,
               activation: str = 'relu',
               bn_layer: NormLayerFn = keras.layers.BatchNormalization,
               conv_kernel_weight_decay: float = 0.0):
    super().__init__(name=name)
    self._height = height
    self._width = width
    self._num_channels = num_channels
    self._activation = activation
    self._activation_fn = activations.get_activation(activation)
    self._bn_layer = bn_layer
    self._conv_kernel_weight_decay = conv_kernel_weight_decay

  def _route(self, shape) -> str:
    _, height, width, channels = shape
    if channels == self._num_channels:
      return 'resize'
    if (height + 1) // 2 == self._height and (width + 1) // 2 == self._width:
      return 'strided'
    return 'project'

  def build(self, input_shapes: Sequence):
    self._routes = []
    for index, shape in enumerate(input_shapes):
      shape = tf.TensorShape(shape).as_list()
      route = self._route(shape)
      self._routes.append(route)
      if route == 'resize':
        continue
      attribute = f'_strided_conv_bn{index + 1}' if route == 'strided' else (
          f'_resized_conv_bn{index + 1}')
      checkpoint_names.set_checkpoint_child(self, attribute, convolutions.Conv2DSame(
          self._num_channels, 1, checkpoint_names.layer_name(attribute),
          strides=2 if route == 'strided' else 1, use_bias=False, use_bn=True,
          bn_layer=self._bn_layer, activation='none',
          conv_kernel_weight_decay=self._conv_kernel_weight_decay))
    super().build(input_shapes)

  def _activate(self, x: tf.Tensor, training) -> tf.Tensor:
    fused = fused_inference.activation(x, training, self._activation)
    return self._activation_fn(x) if fused is None else fused

  def call(self, inputs: Sequence[tf.Tensor], training=False) -> tf.Tensor:
    size = [self._height, self._width]
    outputs = []
    for index, (feature, route) in enumerate(zip(inputs, self._routes)):
      if route == 'resize':
        feature = resize.resize_bilinear(feature, size, align_corners=True)
      elif route == 'strided':
        feature = getattr(self, f'_strided_conv_bn{index + 1}')(
            self._activate(feature, training), training=training)
      else:
        feature = getattr(self, f'_resized_conv_bn{index + 1}')(
            self._activate(feature, training), training=training)
        feature = resize.resize_bilinear(feature, size, align_corners=True)
      feature.set_shape([None, self._height, self._width, self._num_channels])
      outputs.append(feature)
    return tf.add_n(outputs)
