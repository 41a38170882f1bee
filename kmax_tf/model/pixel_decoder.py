"""kMaX-DeepLab pixel decoder.

From the encoder's stride-32 output upwards, each stage runs a BlockGroup
(axial-attention blocks at strides 32 and 16, bottlenecks after), then fuses
its output with the LayerNorm-ed encoder feature of the next finer stride.

Reference: Q. Yu, H. Wang, S. Qiao, M. Collins, Y. Zhu, H. Adam, A. Yuille,
L.-C. Chen, k-means Mask Transformer, ECCV 2022.
"""

from typing import Dict, Mapping, Sequence

import tensorflow as tf

from kmax_tf import common
from kmax_tf.keras_setup import keras
from kmax_tf.layers import axial_block_groups
from kmax_tf.layers import fused_inference
from kmax_tf.layers import resized_fuse
from kmax_tf.layers.convolutions import NormLayerFn

# DeepLab2's configurations, keyed by the decoder's finest output stride.
DEFAULT_DIMS = {4: (512, 256, 128, 64), 2: (512, 256, 128, 64, 32)}
DEFAULT_NUM_BLOCKS = {4: (1, 5, 1, 1), 2: (1, 5, 1, 1, 1)}
DEFAULT_BLOCK_TYPES = {
    4: ('axial', 'axial', 'bottleneck', 'bottleneck'),
    2: ('axial', 'axial', 'bottleneck', 'bottleneck', 'bottleneck'),
}


class KMaXPixelDecoder(keras.Model):
  """Pixel decoder from encoder endpoints to stride-4 (or stride-2) features.

  Checkpoint children: `_backbone_norms/{i}` (LayerNorm of encoder stage 5 - i),
  `_stages/{i}` (BlockGroups), `_skip_connections/{i}` (ResizedFuse).

  Call: the encoder's endpoint dict; needs `stage5` .. `stage{6 - n}` (n =
  number of stages), each float32 [B, h_k, w_k, C_k] with static spatial
  shape. Returns a copy of that dict plus, not activated,
    `decoder_stage{i}` for i = 1..n-1: float32 [B, h_{6-i}, w_{6-i}, 4 * dims[i-1]]
      (i = 1: stride 32, 2: stride 16, 3: stride 8, 4: stride 4),
    `decoder_output`: float32 [B, h_{6-n}, w_{6-n}, 4 * dims[-1]] (stride 4 or 2).
  """

  def __init__(self,
               name: str = 'kmax_pixel_decoder',
               norm_layer: NormLayerFn = keras.layers.BatchNormalization,
               dims: Sequence[int] = DEFAULT_DIMS[4],
               num_blocks: Sequence[int] = DEFAULT_NUM_BLOCKS[4],
               block_types: Sequence[str] = DEFAULT_BLOCK_TYPES[4]):
    """Builds the decoder stages (skip connections are built on first call).

    Args:
      name: model name.
      norm_layer: BatchNorm layer factory for the blocks (see layers.convolutions).
      dims: base width of each stage, from stride 32 to the finest stride.
      num_blocks: residual blocks per stage.
      block_types: 'axial' or 'bottleneck' per stage.
    """
    super().__init__(name=name)
    num_stages = len(dims)
    if not num_stages == len(num_blocks) == len(block_types):
      raise ValueError(f'{name}: dims {tuple(dims)}, num_blocks {tuple(num_blocks)} and '
                       f'block_types {tuple(block_types)} must have the same length')
    if num_stages not in (4, 5):
      raise ValueError(f'{name}: 4 stages (output stride 4) or 5 (output stride 2) are '
                       f'supported, got {num_stages}')
    self._backbone_norms = [fused_inference.LayerNormalization(epsilon=1e-6)
                            for _ in range(num_stages)]
    self._stages = []
    for index, (filters, blocks, block_type) in enumerate(zip(dims, num_blocks, block_types)):
      if block_type.lower() not in ('axial', 'bottleneck'):
        raise ValueError(f"{name}: block_types[{index}] must be 'axial' or 'bottleneck', "
                         f'got {block_type!r}')
      # Every stage is placed as the last ResNet stage at output stride 16
      # (DeepLab2's choice): no striding, and bottleneck 3x3 convs get dilation 2.
      self._stages.append(axial_block_groups.BlockGroup(
          filters=filters, num_blocks=blocks, name=f'kmax_pixeldecoder_{index}',
          original_resnet_stride=1, original_resnet_input_stride=32, output_stride=16,
          backbone_type='resnet_beta',
          use_axial_beyond_stride=16 if block_type.lower() == 'axial' else 0,
          use_transformer_beyond_stride=0, drop_path_keep_prob=1.0, activation='gelu',
          bn_layer=norm_layer))
    self._num_stages = num_stages
    self._dims = tuple(dims)
    self._norm_layer = norm_layer

  @staticmethod
  def _encoder_key(stage_index: int) -> str:
    """Encoder endpoint feeding decoder stage `stage_index` (0: stage5, 1: stage4, ...)."""
    return common.ENCODER_STAGE_KEY.format(5 - stage_index)

  def build(self, input_shape):
    missing = [self._encoder_key(i) for i in range(self._num_stages)
               if self._encoder_key(i) not in input_shape]
    if missing:
      raise ValueError(f'{self.name}: encoder endpoints {missing} are missing; got '
                       f'{sorted(input_shape)}')
    self._skip_connections = []
    for index in range(self._num_stages - 1):
      height, width = tf.TensorShape(input_shape[self._encoder_key(index + 1)])[1:3]
      if height is None or width is None:
        raise ValueError(f'{self.name}: {self._encoder_key(index + 1)} needs a static spatial '
                         'shape')
      self._skip_connections.append(resized_fuse.ResizedFuse(
          name=f'kmax_pixel_decoder_skip_connection_{index}', height=height, width=width,
          num_channels=self._dims[index + 1], activation='gelu', bn_layer=self._norm_layer))
    super().build(input_shape)

  def call(self, endpoints: Mapping[str, tf.Tensor], training=False) -> Dict[str, tf.Tensor]:
    endpoints = dict(endpoints)
    x = self._backbone_norms[0](endpoints[self._encoder_key(0)], training=training)
    for index in range(self._num_stages - 1):
      x, _ = self._stages[index]((x, None), training=training)
      endpoints[common.DECODER_STAGE_KEY.format(index + 1)] = x
      skip = self._backbone_norms[index + 1](
          endpoints[self._encoder_key(index + 1)], training=training)
      x = self._skip_connections[index]([x, skip], training=training)
    x, _ = self._stages[-1]((x, None), training=training)
    endpoints[common.DECODER_OUTPUT_KEY] = x
    return endpoints


def kmax_pixel_decoder(high_resolution_output_stride: int = 4,
                       norm_layer: NormLayerFn = keras.layers.BatchNormalization,
                       name: str = 'kmax_pixel_decoder') -> KMaXPixelDecoder:
  """DeepLab2's pixel decoder for output stride 4 (COCO, ADE20K) or 2 (Cityscapes)."""
  if high_resolution_output_stride not in DEFAULT_DIMS:
    raise ValueError('high_resolution_output_stride must be 4 or 2, got '
                     f'{high_resolution_output_stride}')
  return KMaXPixelDecoder(
      name=name, norm_layer=norm_layer, dims=DEFAULT_DIMS[high_resolution_output_stride],
      num_blocks=DEFAULT_NUM_BLOCKS[high_resolution_output_stride],
      block_types=DEFAULT_BLOCK_TYPES[high_resolution_output_stride])
