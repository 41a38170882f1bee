"""kMaX-DeepLab prediction head (DeepLab2's MaX-DeepLab "decoder").

From the transformer decoder's endpoints it predicts

* `pixel_space_normalized_feature`: an L2-normalised per-pixel embedding
  [B, H, W, D] (pixel-space head + BatchNorm);
* `transformer_class_logits`: per mask slot [B, N, C + 1], void last, with a
  constant bias towards void (prior probability 0.9, as DeepLab2);
* `pixel_space_mask_logits`: pixel embedding . mask kernel per slot
  [B, H, W, N], batch-normalised with one shared scale and shift;
* optionally `semantic_logits` [B, H_s, W_s, C] from an auxiliary semantic
  head, fed by an auxiliary semantic decoder (ASPP + two low-level fusions)
  when the semantic feature is coarser than the panoptic one.

The same class without the semantic branch is the auxiliary clustering
predictor of every kMaX decoder layer.
"""

import math
from typing import Callable, Dict, Optional, Sequence

import tensorflow as tf

from kmax_tf import common
from kmax_tf.keras_setup import keras
from kmax_tf.layers import checkpoint_names
from kmax_tf.layers import convolutions
from kmax_tf.layers import fused_inference
from kmax_tf.layers import resize

NormLayerFn = Callable[..., keras.layers.Layer]

# The transformer's class head initially predicts void with this probability.
VOID_PRIOR_PROBABILITY = 0.9
_PIXEL_SPACE_FEATURE = 'pixel_space_feature'


def transformer_class_head_num_classes(num_semantic_classes: int, ignore_label: int) -> int:
  """Class-head channels: semantic classes plus void unless void is a semantic class."""
  if ignore_label >= num_semantic_classes:
    return num_semantic_classes + 1
  return num_semantic_classes


def void_bias(num_classes: int, void_prior_probability: float = VOID_PRIOR_PROBABILITY):
  """Logit offset of the void (last) channel for a softmax prior of `void_prior_probability`."""
  return math.log((num_classes - 1) * void_prior_probability / (1 - void_prior_probability))


class _AtrousConv2DBNAct(convolutions.Conv2DSame):
  """Conv2DSame (stride 1) whose dilated convolution runs as one native op.

  Keras' Conv2D lowers dilation through space-to-batch, which on the small
  stride-32 ASPP input pads heavily (10x slower at rate 18 on 21x21). Same
  variables, same result up to float rounding.
  """

  def __init__(self, output_channels: int, atrous_rate: int, name: str,
               bn_layer: NormLayerFn, activation: str):
    super().__init__(output_channels, kernel_size=3, name=name, atrous_rate=atrous_rate,
                     use_bias=False, use_bn=True, bn_layer=bn_layer, activation=activation)
    self._atrous_rate = atrous_rate

  def build(self, input_shape):
    self._conv.build(input_shape)
    super().build(input_shape)

  def call(self, inputs, training=False):
    kernel = tf.cast(self._conv.kernel, inputs.dtype)
    x = tf.nn.conv2d(inputs, kernel, strides=1, padding='SAME', dilations=self._atrous_rate)
    x = self._batch_norm(x, training=training)
    return self._activation_fn(x) if self._activation_fn is not None else x


class ASPPConv(keras.layers.Layer):
  """3x3 atrous conv + BN + activation (child `_conv_bn_act`)."""

  def __init__(self, output_channels: int, atrous_rate: int, name: str,
               bn_layer: NormLayerFn, activation: str):
    super().__init__(name=name)
    self._conv_bn_act = _AtrousConv2DBNAct(output_channels, atrous_rate, 'conv_bn_act',
                                           bn_layer, activation)

  def call(self, inputs, training=False):
    return self._conv_bn_act(inputs, training=training)


class ASPPPool(keras.layers.Layer):
  """Global average pooling + 1x1 conv + BN + activation, broadcast back to [H, W]."""

  def __init__(self, output_channels: int, name: str, bn_layer: NormLayerFn, activation: str):
    super().__init__(name=name)
    self._conv_bn_act = convolutions.Conv2DSame(
        output_channels, kernel_size=1, name='conv_bn_act', use_bias=False, use_bn=True,
        bn_layer=bn_layer, activation=activation)

  def call(self, inputs, training=False):
    pooled = tf.reduce_mean(inputs, axis=[1, 2], keepdims=True)
    pooled = self._conv_bn_act(pooled, training=training)
    return tf.cast(resize.resize_align_corners(pooled, tf.shape(inputs)[1:3]), inputs.dtype)


class ASPP(keras.layers.Layer):
  """Atrous spatial pyramid pooling (Chen et al. 2017), DeepLab2 layout.

  Input float [B, H, W, C_in]; output float [B, H, W, output_channels].
  """

  def __init__(self, output_channels: int, atrous_rates: Sequence[int], name: str = 'aspp',
               use_only_1x1_proj_conv: bool = False,
               bn_layer: NormLayerFn = keras.layers.BatchNormalization,
               activation: str = 'relu'):
    super().__init__(name=name)
    if not use_only_1x1_proj_conv and len(atrous_rates) != 3:
      raise ValueError(f'model_options.decoder.atrous_rates needs 3 rates, got '
                       f'{list(atrous_rates)}')
    self._use_only_1x1_proj_conv = use_only_1x1_proj_conv
    self._proj_conv_bn_act = convolutions.Conv2DSame(
        output_channels, kernel_size=1, name='proj_conv_bn_act', use_bias=False, use_bn=True,
        bn_layer=bn_layer, activation=activation)
    if not use_only_1x1_proj_conv:
      self._conv_bn_act = convolutions.Conv2DSame(
          output_channels, kernel_size=1, name='conv_bn_act', use_bias=False, use_bn=True,
          bn_layer=bn_layer, activation=activation)
      self._aspp_conv1 = ASPPConv(output_channels, atrous_rates[0], 'aspp_conv1', bn_layer,
                                  activation)
      self._aspp_conv2 = ASPPConv(output_channels, atrous_rates[1], 'aspp_conv2', bn_layer,
                                  activation)
      self._aspp_conv3 = ASPPConv(output_channels, atrous_rates[2], 'aspp_conv3', bn_layer,
                                  activation)
      self._aspp_pool = ASPPPool(output_channels, 'aspp_pool', bn_layer, activation)
      self._proj_drop = keras.layers.Dropout(rate=0.1)

  def call(self, inputs, training=False):
    if self._use_only_1x1_proj_conv:
      return self._proj_conv_bn_act(inputs, training=training)
    branches = [
        self._conv_bn_act(inputs, training=training),
        self._aspp_conv1(inputs, training=training),
        self._aspp_conv2(inputs, training=training),
        self._aspp_conv3(inputs, training=training),
        self._aspp_pool(inputs, training=training),
    ]
    x = self._proj_conv_bn_act(tf.concat(branches, axis=3), training=training)
    return self._proj_drop(x, training=training)


class SemanticDecoder(keras.layers.Layer):
  """ASPP on a high-level feature, then upsample-and-fuse with low-level features.

  DeepLab2's Panoptic-DeepLab single decoder. Call: a dict of features; reads
  `high_level_feature_key` and `low_level_feature_keys` (finest last).
  Output float [B, H_low, W_low, decoder_channels] at the last low-level resolution.
  """

  def __init__(self, high_level_feature_key: str, low_level_feature_keys: Sequence[str],
               low_level_channels_project: Sequence[int], aspp_channels: int,
               decoder_channels: int, atrous_rates: Sequence[int], name: str,
               aspp_use_only_1x1_proj_conv: bool = False,
               decoder_conv_type: str = 'depthwise_separable_conv',
               bn_layer: NormLayerFn = keras.layers.BatchNormalization,
               activation: str = 'relu'):
    super().__init__(name=name)
    if len(low_level_feature_keys) != len(low_level_channels_project):
      raise ValueError(
          'model_options.max_deeplab.auxiliary_low_level: every entry needs a feature_key and '
          f'channels_project (got {len(low_level_feature_keys)} keys, '
          f'{len(low_level_channels_project)} channel counts)')
    self._high_level_feature_key = high_level_feature_key
    self._low_level_feature_keys = tuple(low_level_feature_keys)
    self._aspp = ASPP(aspp_channels, atrous_rates, name='aspp',
                      use_only_1x1_proj_conv=aspp_use_only_1x1_proj_conv, bn_layer=bn_layer,
                      activation=activation)
    self._fusions = []
    for index, channels in enumerate(low_level_channels_project):
      project_attribute = f'_low_level_conv{index + 1}'
      fusion_attribute = f'_fusion_conv{index + 1}'
      checkpoint_names.set_checkpoint_child(self, project_attribute, convolutions.Conv2DSame(
          channels, kernel_size=1, name=checkpoint_names.layer_name(project_attribute),
          use_bias=False, use_bn=True, bn_layer=bn_layer, activation=activation))
      checkpoint_names.set_checkpoint_child(self, fusion_attribute, convolutions.StackedConv2DSame(
          num_layers=1, conv_type=decoder_conv_type, output_channels=decoder_channels,
          kernel_size=5, name=checkpoint_names.layer_name(fusion_attribute), use_bias=False,
          use_bn=True, bn_layer=bn_layer, activation=activation))
      self._fusions.append((project_attribute, fusion_attribute))

  def call(self, features: Dict[str, tf.Tensor], training=False) -> tf.Tensor:
    x = self._aspp(features[self._high_level_feature_key], training=training)
    for feature_key, (project_attribute, fusion_attribute) in zip(
        self._low_level_feature_keys, self._fusions):
      low_level = getattr(self, project_attribute)(features[feature_key], training=training)
      x = resize.resize_align_corners(x, tf.shape(low_level)[1:3])
      x = tf.cast(x, low_level.dtype)
      x = getattr(self, fusion_attribute)(tf.concat([x, low_level], axis=3), training=training)
    return x


class SingleHead(keras.layers.Layer):
  """5x5 conv block (`conv_block`) then a 1x1 conv with bias (`final_conv`).

  Input float [B, H, W, C]; output float [B, H, W, output_channels].
  """

  def __init__(self, intermediate_channels: int, output_channels: int, name: str,
               conv_type: str = 'depthwise_separable_conv',
               bn_layer: NormLayerFn = keras.layers.BatchNormalization,
               activation: str = 'relu'):
    super().__init__(name=name)
    self.conv_block = convolutions.StackedConv2DSame(
        num_layers=1, conv_type=conv_type, output_channels=intermediate_channels,
        kernel_size=5, name='conv_block', use_bias=False, use_bn=True, bn_layer=bn_layer,
        activation=activation)
    self.final_conv = keras.layers.Conv2D(
        output_channels, kernel_size=1, name='final_conv',
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.01))

  def call(self, inputs, training=False):
    return self.final_conv(self.conv_block(inputs, training=training))


class KMaXPredictionHead(keras.layers.Layer):
  """Mask, class, pixel-embedding and (optionally) semantic predictions.

  Call: a dict with 'feature_panoptic' [B, H, W, C_p], 'transformer_class_feature'
  and 'transformer_mask_feature' [B, N, C_t], and, with the semantic branch,
  'feature_semantic' plus the semantic decoder's inputs. Returns DeepLab2's
  prediction dict (module docstring); logits and the normalised feature are
  float32 whatever the compute dtype.
  """

  def __init__(self,
               num_semantic_classes: int,
               ignore_label: int,
               pixel_space_head_channels: int = 256,
               pixel_space_feature_channels: int = 128,
               pixel_space_head_conv_type: str = 'depthwise_separable_conv',
               use_semantic_head: bool = True,
               semantic_head_channels: int = 256,
               semantic_head_conv_type: str = 'depthwise_separable_conv',
               semantic_decoder_fn: Optional[Callable[[], SemanticDecoder]] = None,
               bn_layer: NormLayerFn = keras.layers.BatchNormalization,
               activation: str = 'gelu',
               name: str = 'kmax_prediction_head'):
    """Builds the head.

    Args:
      num_semantic_classes: semantic classes of the dataset (semantic head output).
      ignore_label: the dataset's void label; decides whether the class head
        needs an extra void channel.
      pixel_space_head_channels: channels of the pixel-space conv block.
      pixel_space_feature_channels: pixel embedding / mask kernel channels D.
      pixel_space_head_conv_type: 'depthwise_separable_conv' or 'standard_conv'.
      use_semantic_head: predict `semantic_logits` (off for clustering heads).
      semantic_head_channels: channels of the semantic conv block.
      semantic_head_conv_type: conv type of the semantic head.
      semantic_decoder_fn: builds the auxiliary semantic decoder; None for none.
      bn_layer: normalization layer factory.
      activation: activation name.
      name: layer name.
    """
    super().__init__(name=name)
    self._use_semantic_head = use_semantic_head
    self._use_semantic_decoder = use_semantic_head and semantic_decoder_fn is not None
    if self._use_semantic_decoder:
      self._auxiliary_semantic_decoder = semantic_decoder_fn()
    if use_semantic_head:
      self._auxiliary_semantic_head = SingleHead(
          semantic_head_channels, num_semantic_classes, 'auxiliary_semantic_head',
          conv_type=semantic_head_conv_type, bn_layer=bn_layer, activation=activation)
    self._pixel_space_head = SingleHead(
        pixel_space_head_channels, pixel_space_feature_channels, 'pixel_space_head',
        conv_type=pixel_space_head_conv_type, bn_layer=bn_layer, activation=activation)
    self._transformer_mask_head = convolutions.Conv1D(
        pixel_space_feature_channels, 'transformer_mask_head', use_bias=False, use_bn=True,
        bn_layer=bn_layer, activation=None, kernel_initializer='he_normal')
    self._num_classes = transformer_class_head_num_classes(num_semantic_classes, ignore_label)
    self._transformer_class_head = convolutions.Conv1D(
        self._num_classes, 'transformer_class_head', use_bias=True, use_bn=False,
        activation=None, kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.01))
    self._pixel_space_feature_batch_norm = bn_layer(
        axis=-1, name='pixel_space_feature_batch_norm',
        gamma_initializer=keras.initializers.Constant(1.0))
    # One scale and shift shared by all mask slots (BN on an added unit axis);
    # gamma 0.1 starts the mask logits at a low temperature.
    self._pixel_space_mask_batch_norm = bn_layer(
        axis=-1, name='pixel_space_mask_batch_norm',
        gamma_initializer=keras.initializers.Constant(0.1))

  @property
  def num_classes(self) -> int:
    """Class-head channels including void."""
    return self._num_classes

  @property
  def checkpoint_items(self) -> Dict[str, keras.layers.Layer]:
    """Checkpoint root children contributed by the head (DeepLab2 names)."""
    items = {
        common.CKPT_PIXEL_SPACE_HEAD: self._pixel_space_head,
        common.CKPT_TRANSFORMER_MASK_HEAD: self._transformer_mask_head,
        common.CKPT_TRANSFORMER_CLASS_HEAD: self._transformer_class_head,
        common.CKPT_PIXEL_SPACE_FEATURE_BATCH_NORM: self._pixel_space_feature_batch_norm,
        common.CKPT_PIXEL_SPACE_MASK_BATCH_NORM: self._pixel_space_mask_batch_norm,
    }
    if self._use_semantic_decoder:
      items[common.CKPT_SEMANTIC_DECODER] = self._auxiliary_semantic_decoder
    if self._use_semantic_head:
      items[common.CKPT_SEMANTIC_HEAD_WITHOUT_LAST_LAYER] = (
          self._auxiliary_semantic_head.conv_block)
      items[common.CKPT_SEMANTIC_LAST_LAYER] = self._auxiliary_semantic_head.final_conv
    return items

  def call(self, features: Dict[str, tf.Tensor], training=False) -> Dict[str, tf.Tensor]:
    results = {}
    panoptic_features = features['feature_panoptic']
    if self._use_semantic_head:
      semantic_features = features['feature_semantic']
      # The decoder runs only when the semantic feature is coarser than the
      # panoptic one (always, for kMaX's stride-32 'stage5').
      if (self._use_semantic_decoder and
          semantic_features.shape[1:3] != panoptic_features.shape[1:3]):
        semantic_features = self._auxiliary_semantic_decoder(features, training=training)
      results[common.PRED_SEMANTIC_LOGITS_KEY] = tf.cast(
          self._auxiliary_semantic_head(semantic_features, training=training), tf.float32)

    pixel_feature = self._pixel_space_head(panoptic_features, training=training)
    pixel_feature = fused_inference.batch_norm(self._pixel_space_feature_batch_norm, pixel_feature,
                                               training)
    pixel_feature = tf.math.l2_normalize(pixel_feature, axis=-1)
    results[common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY] = tf.cast(pixel_feature, tf.float32)

    class_logits = tf.cast(
        self._transformer_class_head(features['transformer_class_feature'], training=training),
        tf.float32)
    bias = tf.one_hot(self._num_classes - 1, self._num_classes) * void_bias(self._num_classes)
    results[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY] = class_logits + bias

    mask_kernel = self._transformer_mask_head(features['transformer_mask_feature'],
                                              training=training)
    mask_logits = tf.einsum('bhwd,bid->bhwi', pixel_feature, mask_kernel)
    mask_logits = fused_inference.batch_norm(self._pixel_space_mask_batch_norm,
                                             mask_logits[..., None], training)
    results[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY] = tf.cast(mask_logits[..., 0], tf.float32)

    if common.PRED_AUXILIARY_OUTPUTS in features:
      results[common.PRED_AUXILIARY_OUTPUTS] = features[common.PRED_AUXILIARY_OUTPUTS]
    return results
