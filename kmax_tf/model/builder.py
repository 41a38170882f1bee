"""Builds a kMaX-DeepLab model from an ExperimentOptions config.

DeepLab2 derives four kMaX settings from the dataset name (mask slots, pixel
decoder output stride, auxiliary semantic decoder, decoder drop path). Here
they come from the dataset descriptor, and config fields in
`model_options.max_deeplab` (numbers >= 1000, kmax_tf extensions) override the
descriptor when set.
"""

import dataclasses
import functools
from typing import Callable, Dict, Optional, Tuple

import tensorflow as tf

from kmax_tf.data import dataset_descriptors
from kmax_tf.keras_setup import keras
from kmax_tf.layers import recompute
from kmax_tf.model import kmax_deeplab
from kmax_tf.model import pixel_decoder as pixel_decoder_lib
from kmax_tf.model import post_processor as post_processor_lib
from kmax_tf.model import prediction_head
from kmax_tf.model import transformer_decoder as transformer_decoder_lib
from kmax_tf.model.pixel_encoder import axial_resnet
from kmax_tf.model.pixel_encoder import convnext

_ACTIVATION = 'gelu'


def _convnext_builder(variant: str) -> Callable[..., keras.Model]:
  def build(drop_path_keep_prob, bn_layer, input_shape, pretrained_weights_path):
    return convnext.build_convnext_encoder(
        variant, drop_path_keep_prob=drop_path_keep_prob, input_shape=input_shape,
        pretrained_weights_path=pretrained_weights_path, norm_layer=bn_layer)
  return build


def _resnet_builder(build_fn) -> Callable[..., keras.Model]:
  # DeepLab2 restores ResNet ImageNet weights through initial_checkpoint, not here.
  def build(drop_path_keep_prob, bn_layer, input_shape, pretrained_weights_path,
            scaling=None):
    del pretrained_weights_path
    return build_fn(drop_path_keep_prob=drop_path_keep_prob, bn_layer=bn_layer,
                    input_shape=input_shape, **(scaling or {}))
  return build


# Backbone proto fields that scale the ResNet encoders (1.0: DeepLab2's model).
_RESNET_SCALING_FIELDS = ('backbone_width_multiplier', 'backbone_layer_multiplier',
                          'stem_width_multiplier')


# `model_options.backbone.name` -> builder(drop_path_keep_prob, bn_layer,
# input_shape, pretrained_weights_path[, scaling]). The ResNet encoders also take
# the backbone's width / layer / stem multipliers (`scaling`).
_SCALABLE_ENCODER_BUILDERS: Dict[str, Callable[..., keras.Model]] = {
    'kmax_resnet50': _resnet_builder(axial_resnet.kmax_resnet50),
    'kmax_axial_resnet50': _resnet_builder(axial_resnet.kmax_axial_resnet50),
}
# The kMaX pixel encoders (DeepLab2 names); config validation reads this list.
PIXEL_ENCODER_BUILDERS: Dict[str, Callable[..., keras.Model]] = {
    **_SCALABLE_ENCODER_BUILDERS,
    'kmax_convnext_tiny': _convnext_builder('tiny'),
    'kmax_convnext_small': _convnext_builder('small'),
    'kmax_convnext_base': _convnext_builder('base'),
    'kmax_convnext_large': _convnext_builder('large'),
}


@dataclasses.dataclass(frozen=True)
class KMaXSettings:
  """The dataset-dependent kMaX architecture settings, resolved."""

  num_mask_slots: int
  high_resolution_output_stride: int
  use_auxiliary_semantic_decoder: bool
  transformer_decoder_drop_path_keep_prob: float
  transformer_decoder_num_layers: Tuple[int, int, int] = (2, 2, 2)
  pixel_decoder_channels: Optional[Tuple[int, ...]] = None
  pixel_decoder_num_blocks: Optional[Tuple[int, ...]] = None


def resolve_kmax_settings(max_deeplab_options, descriptor) -> KMaXSettings:
  """Descriptor defaults, overridden by the config's extension fields when set."""
  options = max_deeplab_options

  def pick(field):
    return getattr(options, field) if options.HasField(field) else getattr(descriptor, field)

  settings = KMaXSettings(
      num_mask_slots=pick('num_mask_slots'),
      high_resolution_output_stride=pick('high_resolution_output_stride'),
      use_auxiliary_semantic_decoder=pick('use_auxiliary_semantic_decoder'),
      transformer_decoder_drop_path_keep_prob=pick('transformer_decoder_drop_path_keep_prob'),
      transformer_decoder_num_layers=tuple(options.transformer_decoder_num_layers) or (2, 2, 2),
      pixel_decoder_channels=tuple(options.pixel_decoder_channels) or None,
      pixel_decoder_num_blocks=tuple(options.pixel_decoder_num_blocks) or None)
  prefix = 'model_options.max_deeplab'
  if settings.num_mask_slots <= 0:
    raise ValueError(f'{prefix}.num_mask_slots must be positive, got {settings.num_mask_slots}')
  if settings.high_resolution_output_stride not in pixel_decoder_lib.DEFAULT_DIMS:
    raise ValueError(f'{prefix}.high_resolution_output_stride must be 4 or 2, got '
                     f'{settings.high_resolution_output_stride}')
  if not 0.0 < settings.transformer_decoder_drop_path_keep_prob <= 1.0:
    raise ValueError(f'{prefix}.transformer_decoder_drop_path_keep_prob must be in (0, 1], got '
                     f'{settings.transformer_decoder_drop_path_keep_prob}')
  layers = settings.transformer_decoder_num_layers
  if len(layers) != 3 or min(layers) < 0 or sum(layers) == 0:
    raise ValueError(f'{prefix}.transformer_decoder_num_layers needs 3 non-negative counts '
                     f'(strides 32, 16, 8), not all zero; got {list(layers)}')
  num_stages = len(pixel_decoder_lib.DEFAULT_DIMS[settings.high_resolution_output_stride])
  for field in ('pixel_decoder_channels', 'pixel_decoder_num_blocks'):
    values = getattr(settings, field)
    if values is not None and (len(values) != num_stages or min(values) <= 0):
      raise ValueError(
          f'{prefix}.{field} needs {num_stages} positive values for output stride '
          f'{settings.high_resolution_output_stride} (stride 32 first), got {list(values)}')
  return settings


def norm_layer_from_config(config) -> Callable[..., keras.layers.Layer]:
  """BatchNorm factory: synchronized when `use_sync_batchnorm`, with the solver's stats.

  The layer is Keras' BatchNormalization, made safe for activation recomputation.
  Synchronization only matters with more than one replica in the current
  strategy (call this inside its scope). With one replica the batch statistics
  are global already, and Keras' fused kernel, which it refuses for
  synchronized layers, computes them several times faster (the two-pass
  moments and their gradients were 17% of a COCO R50 training step on CPU).
  The variables and checkpoint keys are the same either way.
  """
  solver = config.trainer_options.solver_options
  synchronized = (solver.use_sync_batchnorm and
                  tf.distribute.get_strategy().num_replicas_in_sync > 1)
  return functools.partial(
      recompute.BatchNormalization, synchronized=synchronized,
      momentum=solver.batchnorm_momentum, epsilon=solver.batchnorm_epsilon)


def _build_pixel_encoder(config, bn_layer, input_shape):
  backbone = config.model_options.backbone
  if backbone.name not in PIXEL_ENCODER_BUILDERS:
    raise ValueError(
        f'model_options.backbone.name {backbone.name!r} is not a kMaX pixel encoder; valid: '
        f'{", ".join(sorted(PIXEL_ENCODER_BUILDERS))}')
  pretrained = backbone.pretrained_weights if backbone.HasField('pretrained_weights') else None
  scaling = {field: getattr(backbone, field) for field in _RESNET_SCALING_FIELDS
             if getattr(backbone, field) != 1.0}
  kwargs = {}
  if scaling:
    if backbone.name not in _SCALABLE_ENCODER_BUILDERS:
      raise ValueError(f'model_options.backbone.{", ".join(sorted(scaling))} must be 1.0 for '
                       f'{backbone.name!r} (only the ResNet encoders are scalable)')
    kwargs['scaling'] = scaling
  return PIXEL_ENCODER_BUILDERS[backbone.name](
      drop_path_keep_prob=backbone.drop_path_keep_prob, bn_layer=bn_layer,
      input_shape=input_shape, pretrained_weights_path=pretrained or None, **kwargs)


def _build_pixel_decoder(settings: KMaXSettings, bn_layer):
  stride = settings.high_resolution_output_stride
  dims = settings.pixel_decoder_channels or pixel_decoder_lib.DEFAULT_DIMS[stride]
  num_blocks = settings.pixel_decoder_num_blocks or pixel_decoder_lib.DEFAULT_NUM_BLOCKS[stride]
  return pixel_decoder_lib.KMaXPixelDecoder(
      name='kmax_pixel_decoder', norm_layer=bn_layer, dims=dims, num_blocks=num_blocks,
      block_types=pixel_decoder_lib.DEFAULT_BLOCK_TYPES[stride])


def _num_semantic_classes(config, descriptor) -> int:
  configured = config.model_options.max_deeplab.auxiliary_semantic_head.output_channels
  if configured and configured != descriptor.num_classes:
    raise ValueError(
        'model_options.max_deeplab.auxiliary_semantic_head.output_channels is '
        f'{configured} but dataset {descriptor.name!r} has {descriptor.num_classes} classes')
  return descriptor.num_classes


def build_prediction_head(config, descriptor, bn_layer, use_semantic_head: bool,
                          use_semantic_decoder: bool, name: str = 'MaXDeepLab'):
  """DeepLab2's MaX-DeepLab head from the config (also the clustering head)."""
  options = config.model_options.max_deeplab
  decoder = config.model_options.decoder
  semantic_decoder_fn = None
  if use_semantic_head and use_semantic_decoder:
    def semantic_decoder_fn():
      return prediction_head.SemanticDecoder(
          high_level_feature_key=decoder.feature_key,
          low_level_feature_keys=[item.feature_key for item in options.auxiliary_low_level],
          low_level_channels_project=[item.channels_project
                                      for item in options.auxiliary_low_level],
          aspp_channels=decoder.aspp_channels, decoder_channels=decoder.decoder_channels,
          atrous_rates=list(decoder.atrous_rates), name='auxiliary_semantic_decoder',
          aspp_use_only_1x1_proj_conv=decoder.aspp_use_only_1x1_proj_conv,
          decoder_conv_type=decoder.decoder_conv_type, bn_layer=bn_layer,
          activation=_ACTIVATION)
  if not options.pixel_space_head.output_channels or not options.pixel_space_head.head_channels:
    raise ValueError('model_options.max_deeplab.pixel_space_head needs output_channels and '
                     'head_channels')
  return prediction_head.KMaXPredictionHead(
      num_semantic_classes=_num_semantic_classes(config, descriptor),
      ignore_label=descriptor.ignore_label,
      pixel_space_head_channels=options.pixel_space_head.head_channels,
      pixel_space_feature_channels=options.pixel_space_head.output_channels,
      pixel_space_head_conv_type=options.pixel_space_head.head_conv_type,
      use_semantic_head=use_semantic_head,
      semantic_head_channels=options.auxiliary_semantic_head.head_channels or 256,
      semantic_head_conv_type=options.auxiliary_semantic_head.head_conv_type,
      semantic_decoder_fn=semantic_decoder_fn, bn_layer=bn_layer, activation=_ACTIVATION,
      name=name)


def build_model(config, dataset_descriptor=None, build: bool = True
                ) -> kmax_deeplab.KMaXDeepLab:
  """kMaX-DeepLab for `config` (an ExperimentOptions proto).

  Args:
    config: the experiment config; `model_options.max_deeplab` must be set.
    dataset_descriptor: optional DatasetDescriptor; default: the one named by
      `train_dataset_options`.
    build: create the weights by tracing the model on the train crop, as
      DeepLab2 does (the encoder is built for that input shape either way).

  Returns:
    A KMaXDeepLab whose post-processor uses the eval crop by default.
  """
  if config.model_options.WhichOneof('meta_architecture') != 'max_deeplab':
    raise ValueError('kMaX-DeepLab needs model_options.max_deeplab in the config (got '
                     f'{config.model_options.WhichOneof("meta_architecture")!r})')
  crop = list(config.train_dataset_options.crop_size)
  if len(crop) != 2 or min(crop) <= 0:
    raise ValueError(f'train_dataset_options.crop_size must be [height, width], got {crop}')
  descriptor = dataset_descriptor or dataset_descriptors.descriptor_from_options(
      config.train_dataset_options)
  settings = resolve_kmax_settings(config.model_options.max_deeplab, descriptor)
  bn_layer = norm_layer_from_config(config)
  input_shape = crop + [3]

  encoder = _build_pixel_encoder(config, bn_layer, input_shape)
  pixel_decoder = _build_pixel_decoder(settings, bn_layer)

  def clustering_head():
    return build_prediction_head(config, descriptor, bn_layer, use_semantic_head=False,
                                 use_semantic_decoder=False)

  transformer_decoder = transformer_decoder_lib.KMaXTransformerDecoder(
      auxiliary_predictor_fn=clustering_head, bn_layer=bn_layer,
      num_layers_per_stage=settings.transformer_decoder_num_layers,
      num_mask_slots=settings.num_mask_slots,
      drop_path_keep_prob=settings.transformer_decoder_drop_path_keep_prob)
  head = build_prediction_head(config, descriptor, bn_layer, use_semantic_head=True,
                               use_semantic_decoder=settings.use_auxiliary_semantic_decoder)
  post_processor = post_processor_lib.KMaXPostProcessor(
      post_processor_lib.PostProcessingOptions.from_config(config, descriptor))
  model = kmax_deeplab.KMaXDeepLab(encoder, pixel_decoder, transformer_decoder, head,
                                   post_processor)
  if build:
    model(keras.Input(shape=input_shape), training=False, post_processing=False)
  return model
