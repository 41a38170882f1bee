"""Inception-style stem: three 3x3 convolutions, the first with stride 2.

Reference: C. Szegedy, S. Ioffe, V. Vanhoucke, A. Alemi, Inception-v4,
Inception-ResNet and the Impact of Residual Connections on Learning, AAAI 2017.
Used by MaX-DeepLab-S / kMaX axial-ResNet-50.
"""

import tensorflow as tf

from kmax_tf.keras_setup import keras
from kmax_tf.layers import convolutions
from kmax_tf.layers.convolutions import NormLayerFn


class InceptionStem(keras.layers.Layer):
  """`_conv1_bn_act` (stride 2) -> `_conv2_bn_act` -> `_conv3_bn` (not activated).

  Input: float [B, H, W, 3]. Output: float [B, ceil(H/2), ceil(W/2),
  int(128 * width_multiplier)], not activated.
  """

  def __init__(self,
               bn_layer: NormLayerFn = keras.layers.BatchNormalization,
               width_multiplier: float = 1.0,
               conv_kernel_weight_decay: float = 0.0,
               activation: str = 'relu',
               name: str = 'stem'):
    super().__init__(name=name)
    conv = lambda channels, name, strides, activation: convolutions.Conv2DSame(
        channels, 3, name, strides=strides, use_bias=False, use_bn=True, bn_layer=bn_layer,
        activation=activation, conv_kernel_weight_decay=conv_kernel_weight_decay)
    self._conv1_bn_act = conv(int(64 * width_multiplier), 'conv1_bn_act', 2, activation)
    self._conv2_bn_act = conv(int(64 * width_multiplier), 'conv2_bn_act', 1, activation)
    self._conv3_bn = conv(int(128 * width_multiplier), 'conv3_bn', 1, 'none')

  def call(self, inputs: tf.Tensor, training=False) -> tf.Tensor:
    x = self._conv1_bn_act(inputs, training=training)
    x = self._conv2_bn_act(x, training=training)
    return self._conv3_bn(x, training=training)
