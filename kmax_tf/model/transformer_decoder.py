"""The kMaX transformer decoder: cluster centres refined by k-means cross-attention.

kMaX-DeepLab (Yu et al., "k-means Mask Transformer", ECCV 2022) treats the
object queries as cluster centres. Each decoder layer

1. predicts masks for the current centres with an auxiliary clustering head
   (the prediction head without its semantic branch) and assigns every pixel
   to its arg-max centre (the k-means assignment step; a hard, cluster-wise
   argmax instead of a spatial softmax);
2. updates the centres with the sum of the values of their assigned pixels
   (the k-means update step), a residual branch;
3. applies multi-head self-attention among the centres and a feed-forward
   network, both residual.

Layers run on the pixel decoder's stride-32, -16 and -8 features, two per
stride by default. Final centres are projected to class and mask embeddings.

Checkpoint layout (DeepLab2's): the decoder's layers are the list
`_kmax_decoder`; every entry is a block group whose only child is
`_block1_transformer` (see `checkpoint_names.transformer_attribute`).
"""

import functools
from typing import Callable, Dict, Optional, Sequence, Tuple

import tensorflow as tf

from kmax_tf import backend
from kmax_tf import common
from kmax_tf.keras_setup import keras
from kmax_tf.layers import activations
from kmax_tf.layers import checkpoint_names
from kmax_tf.layers import convolutions
from kmax_tf.layers import drop_path
from kmax_tf.layers import fused_inference

NormLayerFn = Callable[..., keras.layers.Layer]

# Pixel decoder endpoints feeding the decoder stages, coarsest first.
FEATURE_KEYS_BY_STRIDE = (
    (32, 'decoder_stage1'),
    (16, 'decoder_stage2'),
    (8, 'decoder_stage3'),
)
CLUSTER_CENTER_CHANNELS = 256
# Endpoints added by the decoder (DeepLab2 names).
TRANSFORMER_CLASS_FEATURE = 'transformer_class_feature'
TRANSFORMER_MASK_FEATURE = 'transformer_mask_feature'
FEATURE_PANOPTIC = 'feature_panoptic'
FEATURE_SEMANTIC = 'feature_semantic'
# Optional intermediate outputs (return_intermediates=True).
CLUSTER_CENTERS_INIT = 'cluster_centers_init'
CLUSTER_CENTERS_AFTER_LAYER = 'cluster_centers_after_layer{}'


class MultiHeadSelfAttention(keras.layers.Layer):
  """Softmax attention with BatchNorm on the logits and on the retrieved values.

  DeepLab2's attention operation: the similarity logits are batch-normalised
  per head, and the retrieved values per (head, channel) before the activation.
  """

  def __init__(self, name: str, bn_layer: NormLayerFn, activation: str = 'gelu'):
    super().__init__(name=name)
    # Logits [B, heads, L, M]: one statistic per head.
    self._batch_norm_similarity = bn_layer(axis=1, name='batch_norm_similarity')
    # Values [B, heads, L, d]: one statistic per head and channel.
    self._batch_norm_retrieved_value = bn_layer(axis=[1, 3], name='batch_norm_retrieved_value')
    self._activation_fn = activations.get_activation(activation)

  def call(self, inputs, training=False) -> tf.Tensor:
    """Attends queries to keys.

    Args:
      inputs: (query [B, heads, L, d_k], key [B, heads, M, d_k],
        value [B, M, heads, d_v]).
      training: BatchNorm mode.

    Returns:
      [B, L, heads * d_v].
    """
    query, key, value = inputs
    logits = tf.einsum('bhld,bhmd->bhlm', query, key)
    logits = self._batch_norm_similarity(logits, training=training)
    weights = tf.nn.softmax(logits, axis=-1)
    retrieved = tf.einsum('bhlm,bmhd->bhld', weights, value)
    retrieved = self._batch_norm_retrieved_value(retrieved, training=training)
    retrieved = self._activation_fn(retrieved)
    _, num_heads, length, depth = retrieved.shape.as_list()
    return tf.reshape(tf.transpose(retrieved, [0, 2, 1, 3]), [-1, length, num_heads * depth])


def _split_heads(x: tf.Tensor, num_heads: int) -> tf.Tensor:
  """[B, L, heads * d] -> [B, heads, L, d]."""
  _, length, channels = x.shape.as_list()
  x = tf.reshape(x, [-1, length, num_heads, channels // num_heads])
  return tf.transpose(x, [0, 2, 1, 3])


class KMaXTransformerLayer(keras.layers.Layer):
  """One kMaX decoder layer (k-means cross-attention, self-attention, FFN).

  Call inputs: (pixel_feature float [B, H, W, C_pixel] not activated,
  cluster_centers float [B, N, C]). Returns (new cluster_centers [B, N, C],
  auxiliary prediction dict of the pre-update centres).
  """

  def __init__(self,
               name: str,
               auxiliary_predictor_fn: Callable[[], keras.layers.Layer],
               bn_layer: NormLayerFn,
               cluster_center_channels: int = CLUSTER_CENTER_CHANNELS,
               bottleneck_channels: int = 256,
               key_channels: int = 128,
               value_channels: int = 256,
               num_heads: int = 8,
               feed_forward_channels: int = 2048,
               activation: str = 'gelu',
               drop_path_keep_prob: float = 1.0):
    """Builds the layer.

    Args:
      name: layer name.
      auxiliary_predictor_fn: builds the clustering head; called once.
      bn_layer: normalization layer factory.
      cluster_center_channels: channels of the cluster centres.
      bottleneck_channels: channels after the input projections.
      key_channels: total query/key channels of the self-attention.
      value_channels: total value channels (self-attention and k-means update).
      num_heads: self-attention heads.
      feed_forward_channels: hidden channels of the FFN.
      activation: activation name.
      drop_path_keep_prob: keep probability of each residual branch in training.
    """
    super().__init__(name=name)
    if key_channels % num_heads or value_channels % num_heads:
      raise ValueError(f'{name}: key ({key_channels}) and value ({value_channels}) channels '
                       f'must be divisible by num_heads ({num_heads})')
    if value_channels != bottleneck_channels:
      raise ValueError(f'{name}: the k-means update needs value_channels == bottleneck_channels')
    self._key_channels = key_channels
    self._value_channels = value_channels
    self._num_heads = num_heads
    self._activation_fn = activations.get_activation(activation)
    self._drop_path_keep_prob = drop_path_keep_prob
    self._activation = activation

    def conv1d(channels, attribute, act='none', gamma='ones', init='he_normal'):
      return convolutions.Conv1D(
          channels, checkpoint_names.layer_name(attribute), use_bias=False, use_bn=True,
          bn_layer=bn_layer, bn_gamma_initializer=gamma, activation=act,
          kernel_initializer=init)

    def attention_init():
      return keras.initializers.TruncatedNormal(stddev=bottleneck_channels ** -0.5)

    self._memory_conv1_bn_act = conv1d(bottleneck_channels, '_memory_conv1_bn_act', activation)
    self._pixel_conv1_bn_act = conv1d(bottleneck_channels, '_pixel_conv1_bn_act', activation)
    self._memory_qkv_conv_bn = conv1d(2 * key_channels + value_channels, '_memory_qkv_conv_bn',
                                      init=attention_init())
    self._pixel_v_conv_bn = conv1d(value_channels, '_pixel_v_conv_bn', init=attention_init())
    self._memory_attention = MultiHeadSelfAttention('memory_attention', bn_layer, activation)
    self._auxiliary_clustering_predictor = auxiliary_predictor_fn()
    # Residual-branch ends start at zero (gamma 0), as in ResNet bottlenecks.
    self._memory_conv3_bn = conv1d(cluster_center_channels, '_memory_conv3_bn', gamma='zeros')
    self._memory_ffn_conv1_bn_act = conv1d(feed_forward_channels, '_memory_ffn_conv1_bn_act',
                                           activation)
    self._memory_ffn_conv2_bn = conv1d(cluster_center_channels, '_memory_ffn_conv2_bn',
                                       gamma='zeros')
    self._kmeans_memory_batch_norm_retrieved_value = bn_layer(
        axis=-1, name='kmeans_memory_batch_norm_retrieved_value')
    self._kmeans_memory_conv3_bn = conv1d(cluster_center_channels, '_kmeans_memory_conv3_bn',
                                          gamma='zeros')
    object.__setattr__(self, '_compiled_center_steps', None)  # see _inference_functions

  def _drop_path(self, branch: tf.Tensor, training: bool) -> tf.Tensor:
    if not training:
      return branch
    mask = drop_path.random_keep_mask(branch, self._drop_path_keep_prob)
    return branch if mask is None else branch * mask

  def _center_projections(self, centers: tf.Tensor, training):
    """Centre-side inputs of a layer.

    Args:
      centers: float [B, N, C].
      training: BatchNorm mode.

    Returns:
      (memory [B, N, C_b], query and key [B, heads, N, d_k], value [B, N, heads, d_v]).
    """
    num_slots = centers.shape[1]
    memory = self._memory_conv1_bn_act(centers, training=training)
    qkv = self._memory_qkv_conv_bn(memory, training=training)
    query, key, value = tf.split(
        qkv, [self._key_channels, self._key_channels, self._value_channels], axis=-1)
    value = tf.reshape(value, [-1, num_slots, self._num_heads,
                               self._value_channels // self._num_heads])
    return (memory, _split_heads(query, self._num_heads), _split_heads(key, self._num_heads),
            value)

  def _center_update(self, centers, update, query, key, value, training) -> tf.Tensor:
    """k-means update, self-attention and FFN of the centres. update: [B, N, C_v] pixel sums."""
    update = self._kmeans_memory_batch_norm_retrieved_value(update, training=training)
    update = self._kmeans_memory_conv3_bn(update, training=training)
    centers = centers + self._drop_path(update, training)

    attended = self._memory_attention((query, key, value), training=training)
    attended = self._memory_conv3_bn(attended, training=training)
    centers = self._activation_fn(centers + self._drop_path(attended, training))

    hidden = self._memory_ffn_conv1_bn_act(centers, training=training)
    hidden = self._memory_ffn_conv2_bn(hidden, training=training)
    return self._activation_fn(centers + self._drop_path(hidden, training))

  def _inference_functions(self):
    """The centre-side steps as XLA functions (inference only), or None.

    They work on [B, N, C] tensors (N = 128 centres): about 150 small ops per
    layer, whose scheduling costs more than their arithmetic; compiled, each
    step is one kernel launch. Used once the layer is built (by the caller:
    in inference outside XLA).
    """
    if not self._memory_ffn_conv2_bn.built or not backend.compiles_helpers():
      return None
    if self._compiled_center_steps is None:
      # Partials, not lambdas: TensorFlow counts retracing per code object, and
      # lambdas shared by every layer would look like one function retraced.
      steps = (tf.function(functools.partial(self._center_projections, training=False),
                           jit_compile=True),
               tf.function(functools.partial(self._center_update, training=False),
                           jit_compile=True))
      # Set around Keras' attribute tracking: not part of checkpoints or SavedModels.
      object.__setattr__(self, '_compiled_center_steps', steps)
    return self._compiled_center_steps

  def call(self, inputs, training=False) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
    pixel_feature, centers = inputs
    _, height, width, pixel_channels = pixel_feature.shape.as_list()
    num_slots = centers.shape[1]
    pixels = tf.reshape(pixel_feature, [-1, height * width, pixel_channels])
    compiled = self._inference_functions() if backend.fuses_inference(training) else None
    center_projections, center_update = compiled or (
        lambda c: self._center_projections(c, training),
        lambda *args: self._center_update(*args, training))

    memory, query, key, value = center_projections(centers)
    activated = fused_inference.activation(pixels, training, self._activation)
    if activated is None:
      activated = self._activation_fn(pixels)
    pixel_space = self._pixel_conv1_bn_act(activated, training=training)
    pixel_value = self._pixel_v_conv_bn(pixel_space, training=training)  # [B, HW, C_v]

    # k-means assignment: every pixel goes to the centre with the largest mask logit.
    auxiliary = self._auxiliary_clustering_predictor(
        {FEATURE_PANOPTIC: tf.reshape(pixel_space, [-1, height, width, pixel_space.shape[-1]]),
         TRANSFORMER_CLASS_FEATURE: memory,
         TRANSFORMER_MASK_FEATURE: memory},
        training=training)
    assignment = tf.argmax(auxiliary[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY], axis=-1)
    assignment = tf.stop_gradient(
        tf.one_hot(tf.reshape(assignment, [-1, height * width]), num_slots,
                   dtype=pixel_value.dtype))
    # k-means update: sum of the assigned pixels' values per centre.
    update = tf.einsum('blm,bld->bmd', assignment, pixel_value)
    centers = center_update(centers, update, query, key, value)
    return centers, auxiliary


class _TransformerBlockGroup(keras.layers.Layer):
  """Checkpoint shim: DeepLab2 wraps each decoder layer in a one-block group."""

  def __init__(self, name: str, transformer_layer: KMaXTransformerLayer):
    super().__init__(name=name)
    checkpoint_names.set_checkpoint_child(
        self, checkpoint_names.transformer_attribute(0), transformer_layer)

  @property
  def transformer_layer(self) -> KMaXTransformerLayer:
    return getattr(self, checkpoint_names.transformer_attribute(0))

  def call(self, inputs, training=False):
    return self.transformer_layer(inputs, training=training)


class KMaXTransformerDecoder(keras.Model):
  """Learned cluster centres refined on the stride-32/16/8 pixel features.

  Call: endpoints dict with 'decoder_stage1..3' (strides 32, 16, 8),
  'decoder_output' and 'stage5' (float [B, H_s, W_s, C_s]). Returns a copy
  with 'transformer_class_feature', 'transformer_mask_feature' (float
  [B, N, 256]), 'feature_panoptic' (= decoder_output), 'feature_semantic'
  (= stage5) and `auxiliary_outputs_pred` (one prediction dict per layer).
  """

  def __init__(self,
               auxiliary_predictor_fn: Callable[[], keras.layers.Layer],
               bn_layer: NormLayerFn = keras.layers.BatchNormalization,
               num_layers_per_stage: Sequence[int] = (2, 2, 2),
               num_mask_slots: int = 128,
               drop_path_keep_prob: float = 1.0,
               name: str = 'kmax_transformer_decoder'):
    """Builds the decoder.

    Args:
      auxiliary_predictor_fn: builds one clustering head per layer.
      bn_layer: normalization layer factory.
      num_layers_per_stage: decoder layers at strides 32, 16 and 8.
      num_mask_slots: number of cluster centres N.
      drop_path_keep_prob: keep probability of residual branches in training.
      name: model name.
    """
    super().__init__(name=name)
    if len(num_layers_per_stage) != len(FEATURE_KEYS_BY_STRIDE):
      raise ValueError('num_layers_per_stage needs one entry per stride (32, 16, 8), got '
                       f'{list(num_layers_per_stage)}')
    if num_mask_slots <= 0:
      raise ValueError(f'num_mask_slots must be positive, got {num_mask_slots}')
    self._num_layers_per_stage = tuple(int(n) for n in num_layers_per_stage)
    self._num_mask_slots = num_mask_slots
    self._kmax_decoder = []
    for (stride, _), num_layers in zip(FEATURE_KEYS_BY_STRIDE, self._num_layers_per_stage):
      for i in range(num_layers):
        layer_name = f'kmax_transformer_decoder_os{stride}_{i}'
        transformer = KMaXTransformerLayer(
            name=checkpoint_names.layer_name(checkpoint_names.transformer_attribute(0)),
            auxiliary_predictor_fn=auxiliary_predictor_fn, bn_layer=bn_layer,
            drop_path_keep_prob=drop_path_keep_prob)
        self._kmax_decoder.append(_TransformerBlockGroup(layer_name, transformer))
    self._cluster_centers = self.add_weight(
        name='cluster_centers', shape=(1, num_mask_slots, CLUSTER_CENTER_CHANNELS),
        initializer=keras.initializers.TruncatedNormal(stddev=1.0), trainable=True)
    self._class_embedding_projection = convolutions.Conv1D(
        CLUSTER_CENTER_CHANNELS, 'class_embedding_projection', use_bias=False, use_bn=True,
        bn_layer=bn_layer, activation='gelu')
    self._mask_embedding_projection = convolutions.Conv1D(
        CLUSTER_CENTER_CHANNELS, 'mask_embedding_projection', use_bias=False, use_bn=True,
        bn_layer=bn_layer, activation='gelu')

  @property
  def num_mask_slots(self) -> int:
    return self._num_mask_slots

  @property
  def num_layers(self) -> int:
    return len(self._kmax_decoder)

  def call(self, endpoints: Dict[str, tf.Tensor], training=False,
           return_intermediates: bool = False) -> Dict[str, tf.Tensor]:
    """Runs all decoder layers.

    Args:
      endpoints: pixel decoder endpoints (see the class docstring).
      training: training mode (BatchNorm statistics, drop path).
      return_intermediates: also return the centres before the first and after
        every layer ('cluster_centers_init', 'cluster_centers_after_layer{i}').

    Returns:
      A new endpoints dict.
    """
    endpoints = dict(endpoints)
    first_feature = endpoints[FEATURE_KEYS_BY_STRIDE[0][1]]
    centers = tf.tile(self._cluster_centers, [tf.shape(first_feature)[0], 1, 1])
    centers = tf.cast(centers, first_feature.dtype)
    if return_intermediates:
      endpoints[CLUSTER_CENTERS_INIT] = centers
    auxiliary_outputs = []
    layer_index = 0
    for (_, feature_key), num_layers in zip(FEATURE_KEYS_BY_STRIDE, self._num_layers_per_stage):
      for _ in range(num_layers):
        centers, auxiliary = self._kmax_decoder[layer_index](
            (endpoints[feature_key], centers), training=training)
        auxiliary_outputs.append(auxiliary)
        if return_intermediates:
          endpoints[CLUSTER_CENTERS_AFTER_LAYER.format(layer_index)] = centers
        layer_index += 1
    endpoints[TRANSFORMER_CLASS_FEATURE] = self._class_embedding_projection(
        centers, training=training)
    endpoints[TRANSFORMER_MASK_FEATURE] = self._mask_embedding_projection(
        centers, training=training)
    endpoints[FEATURE_PANOPTIC] = endpoints['decoder_output']
    endpoints[FEATURE_SEMANTIC] = endpoints['stage5']
    endpoints[common.PRED_AUXILIARY_OUTPUTS] = tuple(auxiliary_outputs)
    return endpoints


def build_transformer_decoder(auxiliary_predictor_fn: Callable[[], keras.layers.Layer],
                              bn_layer: NormLayerFn,
                              num_mask_slots: int,
                              drop_path_keep_prob: float,
                              num_layers_per_stage: Optional[Sequence[int]] = None
                              ) -> KMaXTransformerDecoder:
  """The kMaX decoder with DeepLab2's defaults (2 layers per stride)."""
  return KMaXTransformerDecoder(
      auxiliary_predictor_fn=auxiliary_predictor_fn, bn_layer=bn_layer,
      num_layers_per_stage=tuple(num_layers_per_stage or (2, 2, 2)),
      num_mask_slots=num_mask_slots, drop_path_keep_prob=drop_path_keep_prob)
