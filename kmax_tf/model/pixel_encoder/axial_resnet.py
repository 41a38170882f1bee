"""ResNet-50 and axial-ResNet-50 (MaX-S backbone) pixel encoders.

Both are DeepLab2's Axial-ResNet in classification mode at output stride 32:
* `kmax_resnet50`: 7x7 stride-2 stem, bottleneck blocks, ReLU. There is no max
  pooling: the first block of stage 2 has stride 2.
* `kmax_axial_resnet50`: Inception stem (three 3x3 convs), GeLU, and axial
  attention blocks wherever the input stride is >= 16 (stage 4 after its first
  block, and stage 5).

References: K. He, X. Zhang, S. Ren, J. Sun, Deep Residual Learning for Image
Recognition, CVPR 2016; H. Wang et al., Axial-DeepLab, ECCV 2020; H. Wang,
Y. Zhu, H. Adam, A. Yuille, L.-C. Chen, MaX-DeepLab, CVPR 2021.
"""

from typing import Dict, Optional, Sequence

import tensorflow as tf

from kmax_tf import common
from kmax_tf.keras_setup import keras
from kmax_tf.layers import activations
from kmax_tf.layers import axial_block_groups
from kmax_tf.layers import checkpoint_names
from kmax_tf.layers import convolutions
from kmax_tf.layers import stems
from kmax_tf.layers.convolutions import NormLayerFn

# Input strides of the five ResNet stages (stem = stage 1) in the original ResNet.
_STAGE_INPUT_STRIDES = (1, 2, 4, 8, 16)


class AxialResNet(keras.Model):
  """An (axial-)ResNet returning DeepLab2's endpoint dict.

  Checkpoint children: `_stem`, `_stage2` .. `_stage5` (BlockGroups).

  Call: images float32 [B, H, W, 3], already normalised to [-1, 1]
  (`image / 127.5 - 1`), with static H and W. Returns a dict with, for k = 1..5,
  `stage{k}`: float32 [B, ceil(H/2^k), ceil(W/2^k), C_k], not activated, and
  `res{k}`: its activation; plus `backbone_output` (= `res5`). C_k for R50 is
  64 (128 for the Inception stem), 256, 512, 1024, 2048 (times width multipliers).
  """

  def __init__(self,
               name: str,
               num_blocks: Sequence[int] = (3, 4, 6, 3),
               backbone_layer_multiplier: float = 1.0,
               width_multiplier: float = 1.0,
               stem_width_multiplier: float = 1.0,
               output_stride: int = 32,
               backbone_type: str = 'resnet',
               use_axial_beyond_stride: int = 0,
               activation: str = 'relu',
               drop_path_keep_prob: float = 1.0,
               drop_path_schedule: str = 'linear',
               bn_layer: NormLayerFn = keras.layers.BatchNormalization,
               conv_kernel_weight_decay: float = 0.0):
    """Builds the encoder.

    Args:
      name: model name.
      num_blocks: residual blocks of stages 2..5.
      backbone_layer_multiplier: scales num_blocks (int(n * multiplier)).
      width_multiplier: scales the channels of stages 2..5.
      stem_width_multiplier: scales the stem channels.
      output_stride: 32, 16 or 8 (later stages dilate instead of striding).
      backbone_type: 'resnet' (7x7 stem) or 'resnet_beta' (Inception stem).
      use_axial_beyond_stride: axial blocks at input stride >= this; 0: none.
      activation: 'relu' or 'gelu' (exact) etc.
      drop_path_keep_prob: keep probability of the last stage's blocks.
      drop_path_schedule: 'linear' (DeepLab2's kMaX encoders) or 'constant'.
      bn_layer: normalization layer factory, e.g.
        functools.partial(keras.layers.BatchNormalization, synchronized=True,
        momentum=0.99, epsilon=1e-3).
      conv_kernel_weight_decay: L2 weight decay of conv kernels.
    """
    super().__init__(name=name)
    if len(num_blocks) != 4:
      raise ValueError(f'{name}: num_blocks must list 4 stages, got {num_blocks}')
    if output_stride not in (8, 16, 32):
      raise ValueError(f'{name}: output_stride must be 8, 16 or 32, got {output_stride}')
    self._activation_fn = activations.get_activation(activation)
    blocks_per_stage = [int(n * backbone_layer_multiplier) for n in num_blocks]
    if min(blocks_per_stage) < 1:
      raise ValueError(f'{name}: backbone_layer_multiplier {backbone_layer_multiplier} leaves a '
                       f'stage without blocks ({blocks_per_stage})')

    if backbone_type == 'resnet':
      self._stem = convolutions.Conv2DSame(
          int(round(64 * stem_width_multiplier)), 7, 'stem', strides=2, use_bias=False,
          use_bn=True, bn_layer=bn_layer, activation='none',
          conv_kernel_weight_decay=conv_kernel_weight_decay)
    elif backbone_type == 'resnet_beta':
      self._stem = stems.InceptionStem(
          bn_layer=bn_layer, width_multiplier=stem_width_multiplier,
          conv_kernel_weight_decay=conv_kernel_weight_decay, activation=activation)
    else:
      raise ValueError(f"{name}: backbone_type must be 'resnet' or 'resnet_beta', "
                       f'got {backbone_type!r}')

    self._stage_attributes = []
    for stage_index in range(1, 5):
      input_stride = _STAGE_INPUT_STRIDES[stage_index]
      attribute = f'_stage{stage_index + 1}'
      checkpoint_names.set_checkpoint_child(self, attribute, axial_block_groups.BlockGroup(
          filters=int(round(input_stride * 32 * width_multiplier)),
          num_blocks=blocks_per_stage[stage_index - 1],
          name=checkpoint_names.layer_name(attribute),
          original_resnet_stride=2,
          original_resnet_input_stride=input_stride,
          output_stride=output_stride,
          backbone_type=backbone_type,
          use_axial_beyond_stride=use_axial_beyond_stride,
          use_transformer_beyond_stride=0,
          drop_path_keep_prob=drop_path_keep_prob,
          drop_path_schedule=drop_path_schedule,
          activation=activation,
          bn_layer=bn_layer,
          conv_kernel_weight_decay=conv_kernel_weight_decay))
      self._stage_attributes.append(attribute)

  def call(self, inputs: tf.Tensor, training=False) -> Dict[str, tf.Tensor]:
    endpoints = {}
    features = self._stem(inputs, training=training)
    endpoints[common.ENCODER_STAGE_KEY.format(1)] = features
    endpoints[common.ENCODER_ACTIVATED_STAGE_KEY.format(1)] = self._activation_fn(features)
    for stage, attribute in enumerate(self._stage_attributes, start=2):
      features, _ = getattr(self, attribute)((features, None), training=training)
      endpoints[common.ENCODER_STAGE_KEY.format(stage)] = features
      endpoints[common.ENCODER_ACTIVATED_STAGE_KEY.format(stage)] = self._activation_fn(features)
    endpoints[common.BACKBONE_OUTPUT_KEY] = endpoints[common.ENCODER_ACTIVATED_STAGE_KEY.format(5)]
    return endpoints


def _maybe_build(model: keras.Model, input_shape: Optional[Sequence[int]]) -> keras.Model:
  if input_shape is not None:
    if len(input_shape) != 3 or input_shape[-1] != 3:
      raise ValueError(f'encoder input_shape must be (height, width, 3), got {input_shape}')
    model(keras.Input(shape=tuple(input_shape)), training=False)
  return model


def kmax_resnet50(drop_path_keep_prob: float = 1.0,
                  bn_layer: NormLayerFn = keras.layers.BatchNormalization,
                  backbone_width_multiplier: float = 1.0,
                  backbone_layer_multiplier: float = 1.0,
                  stem_width_multiplier: float = 1.0,
                  conv_kernel_weight_decay: float = 0.0,
                  input_shape: Optional[Sequence[int]] = None,
                  name: str = 'resnet50') -> AxialResNet:
  """ResNet-50 encoder of DeepLab2's `kmax_resnet50` (ReLU, 7x7 stem, OS 32).

  Args:
    drop_path_keep_prob: `model_options.backbone.drop_path_keep_prob` (linear schedule).
    bn_layer: normalization layer factory (see AxialResNet).
    backbone_width_multiplier, backbone_layer_multiplier, stem_width_multiplier:
      the backbone proto's scaling knobs; 1.0 is DeepLab2's model.
    conv_kernel_weight_decay: L2 weight decay of conv kernels.
    input_shape: optional (H, W, 3) to build the weights right away.
    name: model name.
  """
  model = AxialResNet(
      name=name, width_multiplier=backbone_width_multiplier,
      backbone_layer_multiplier=backbone_layer_multiplier,
      stem_width_multiplier=stem_width_multiplier, output_stride=32, backbone_type='resnet',
      use_axial_beyond_stride=0, activation='relu', drop_path_keep_prob=drop_path_keep_prob,
      drop_path_schedule='linear', bn_layer=bn_layer,
      conv_kernel_weight_decay=conv_kernel_weight_decay)
  return _maybe_build(model, input_shape)


def kmax_axial_resnet50(drop_path_keep_prob: float = 1.0,
                        bn_layer: NormLayerFn = keras.layers.BatchNormalization,
                        backbone_width_multiplier: float = 1.0,
                        backbone_layer_multiplier: float = 1.0,
                        stem_width_multiplier: float = 1.0,
                        conv_kernel_weight_decay: float = 0.0,
                        input_shape: Optional[Sequence[int]] = None,
                        name: str = 'axial_resnet50') -> AxialResNet:
  """Axial-ResNet-50 (MaX-S backbone) of DeepLab2's `kmax_axial_resnet50`.

  GeLU, Inception stem, axial attention at input stride >= 16, OS 32. Each
  spatial axis at stride 16 must be <= 129 (input <= 2049 pixels).
  Arguments as for `kmax_resnet50`.
  """
  model = AxialResNet(
      name=name, width_multiplier=backbone_width_multiplier,
      backbone_layer_multiplier=backbone_layer_multiplier,
      stem_width_multiplier=stem_width_multiplier, output_stride=32,
      backbone_type='resnet_beta', use_axial_beyond_stride=16, activation='gelu',
      drop_path_keep_prob=drop_path_keep_prob, drop_path_schedule='linear', bn_layer=bn_layer,
      conv_kernel_weight_decay=conv_kernel_weight_decay)
  return _maybe_build(model, input_shape)


# Backbone names as in DeepLab2 configs, without the 'kmax_' prefix.
ENCODER_BUILDERS = {
    'resnet50': kmax_resnet50,
    'axial_resnet50': kmax_axial_resnet50,
}
