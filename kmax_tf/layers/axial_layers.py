"""Axial attention with relative positional encodings.

Reference: H. Wang, Y. Zhu, B. Green, H. Adam, A. Yuille, L.-C. Chen,
Axial-DeepLab: Stand-Alone Axial-Attention for Panoptic Segmentation, ECCV 2020.

Only global axial attention (the whole axis attends to itself) exists, as in
DeepLab2; an axis longer than `query_shape` is rejected.
"""

from typing import Sequence

import tensorflow as tf

from kmax_tf.keras_setup import keras
from kmax_tf.layers import activations
from kmax_tf.layers import fused_inference
from kmax_tf.layers import positional_encodings
from kmax_tf.layers.convolutions import NormLayerFn


class AxialAttention(keras.layers.Layer):
  """Multi-head self-attention along one axis, with query/key/value RPEs.

  Similarities (content q.k, query-RPE, key-RPE) are stacked and batch-normed
  per (term, head) before being summed; retrieved value content and value RPE
  are batch-normed per (term, head, channel) before being summed.

  Input: float [N, L, C] (N = batch x other axis). Output: float [N, L, total_value_depth].
  Children: `qkv_kernel` [C, 2K + V], `_batch_norm_qkv`, `_batch_norm_similarity`
  (params [3, 1, heads, 1, 1]), `_batch_norm_retrieved_output` ([2, 1, heads, 1, V/heads]),
  `_query_rpe`, `_key_rpe`, `_value_rpe`.
  """

  def __init__(self,
               query_shape: int = 129,
               memory_flange: int = 32,
               total_key_depth: int = 512,
               total_value_depth: int = 1024,
               num_heads: int = 8,
               name: str = 'axial_attention',
               use_query_rpe_similarity: bool = True,
               use_key_rpe_similarity: bool = True,
               use_content_similarity: bool = True,
               retrieve_value_rpe: bool = True,
               retrieve_value_content: bool = True,
               initialization_std_for_query_key_rpe: float = 1.0,
               initialization_std_for_value_rpe: float = 1.0,
               self_attention_activation: str = 'softmax',
               bn_layer: NormLayerFn = keras.layers.BatchNormalization,
               conv_kernel_weight_decay: float = 0.0):
    if not (use_content_similarity or use_key_rpe_similarity or use_query_rpe_similarity):
      raise ValueError(f'{name}: at least one similarity term must be used')
    if not (retrieve_value_content or retrieve_value_rpe):
      raise ValueError(f'{name}: retrieve at least one of value content or value RPE')
    if total_key_depth % num_heads or total_value_depth % num_heads:
      raise ValueError(f'{name}: key depth {total_key_depth} and value depth '
                       f'{total_value_depth} must be divisible by num_heads {num_heads}')
    super().__init__(name=name)
    self._max_query_shape = query_shape
    self._memory_flange = memory_flange
    self._total_key_depth = total_key_depth
    self._total_value_depth = total_value_depth
    self._num_heads = num_heads
    self._key_depth_per_head = total_key_depth // num_heads
    self._value_depth_per_head = total_value_depth // num_heads
    self._use_query_rpe_similarity = use_query_rpe_similarity
    self._use_key_rpe_similarity = use_key_rpe_similarity
    self._use_content_similarity = use_content_similarity
    self._retrieve_value_rpe = retrieve_value_rpe
    self._retrieve_value_content = retrieve_value_content
    self._query_key_rpe_std = initialization_std_for_query_key_rpe
    self._value_rpe_std = initialization_std_for_value_rpe
    self._attention_name = self_attention_activation.lower()
    self._attention_fn = activations.get_activation(self_attention_activation)
    self._conv_kernel_weight_decay = conv_kernel_weight_decay
    self._batch_norm_qkv = bn_layer(axis=-1, name='batch_norm_qkv')
    # Stacked similarities are [terms, N, heads, L, M]: one BN per term and head.
    self._batch_norm_similarity = bn_layer(axis=[0, 2], name='batch_norm_similarity')
    # Stacked retrievals are [terms, N, heads, L, depth]: per term, head, channel.
    self._batch_norm_retrieved_output = bn_layer(
        axis=[0, 2, 4], name='batch_norm_retrieved_output')

  def build(self, input_shape):
    length, channels = input_shape[1], input_shape[-1]
    if length is None or length > self._max_query_shape:
      raise ValueError(
          f'{self.name}: axial attention needs a static axis length <= {self._max_query_shape} '
          f'(global attention only), got input shape {tuple(input_shape)}; use a smaller crop')
    self._length = length
    self.qkv_kernel = self.add_weight(
        name='qkv_kernel', shape=[channels, 2 * self._total_key_depth + self._total_value_depth],
        initializer=keras.initializers.TruncatedNormal(stddev=channels**-0.5),
        regularizer=(keras.regularizers.l2(self._conv_kernel_weight_decay)
                     if self._conv_kernel_weight_decay else None))

    def rpe(depth, name, std):
      return positional_encodings.RelativePositionalEncoding(
          length, length, depth, name, initialization_std=std,
          conv_kernel_weight_decay=self._conv_kernel_weight_decay)

    if self._use_query_rpe_similarity:
      self._query_rpe = rpe(self._key_depth_per_head, 'query_rpe', self._query_key_rpe_std)
    if self._use_key_rpe_similarity:
      self._key_rpe = rpe(self._key_depth_per_head, 'key_rpe', self._query_key_rpe_std)
    if self._retrieve_value_rpe:
      self._value_rpe = rpe(self._value_depth_per_head, 'value_rpe', self._value_rpe_std)
    super().build(input_shape)

  def call(self, inputs: tf.Tensor, training=False) -> tf.Tensor:
    length, heads = self._length, self._num_heads
    qkv = tf.einsum('nlc,cd->nld', inputs, self.qkv_kernel)
    qkv = fused_inference.batch_norm(self._batch_norm_qkv, qkv, training)
    query, key, value = tf.split(
        qkv, [self._total_key_depth, self._total_key_depth, self._total_value_depth], axis=-1)
    query = tf.transpose(tf.reshape(query, [-1, length, heads, self._key_depth_per_head]),
                         [0, 2, 1, 3])  # [N, heads, L, dk]
    key = tf.transpose(tf.reshape(key, [-1, length, heads, self._key_depth_per_head]),
                       [0, 2, 1, 3])  # [N, heads, M, dk]
    # [N, heads, M, dv]: transposed once here, the value einsum is a plain
    # batched matmul (same values, 2.5x faster than letting einsum transpose).
    value = tf.transpose(tf.reshape(value, [-1, length, heads, self._value_depth_per_head]),
                         [0, 2, 1, 3])

    # The stacking order (content, query RPE, key RPE) indexes the BN parameters.
    similarities = []
    if self._use_content_similarity:
      similarities.append(tf.einsum('bhld,bhmd->bhlm', query, key))
    if self._use_query_rpe_similarity:
      similarities.append(tf.einsum('bhld,lmd->bhlm', query, self._query_rpe(None)))
    if self._use_key_rpe_similarity:
      similarities.append(tf.einsum('bhmd,lmd->bhlm', key, self._key_rpe(None)))
    weights = None  # [N, heads, L, M]
    if self._attention_name == 'softmax':
      weights = fused_inference.batch_norm_sum(self._batch_norm_similarity, similarities,
                                               training, then='softmax')
    if weights is None:
      similarity = self._batch_norm_similarity(tf.stack(similarities), training=training)
      weights = self._attention_fn(tf.reduce_sum(similarity, axis=0))

    retrieved = []
    if self._retrieve_value_content:
      retrieved.append(tf.einsum('bhlm,bhmd->bhld', weights, value))
    if self._retrieve_value_rpe:
      retrieved.append(tf.einsum('bhlm,lmd->bhld', weights, self._value_rpe(None)))
    output = fused_inference.batch_norm_sum(self._batch_norm_retrieved_output, retrieved,
                                            training)  # [N, heads, L, dv]
    if output is None:
      output = self._batch_norm_retrieved_output(tf.stack(retrieved), training=training)
      output = tf.reduce_sum(output, axis=0)
    output = tf.transpose(output, [0, 2, 1, 3])
    return tf.reshape(output, [-1, length, self._total_value_depth])


class AxialAttention2D(keras.layers.Layer):
  """Height-axis then width-axis attention (`_height_axis`, `_width_axis`).

  Input: float [B, H, W, C] with static H, W, C.
  Output: float [B, ceil(H/s), ceil(W/s), round(filters * value_expansion)].
  """

  def __init__(self,
               strides: int = 1,
               filters: int = 512,
               name: str = 'attention',
               key_expansion: float = 1,
               value_expansion: float = 2,
               query_shape: Sequence[int] = (129, 129),
               memory_flange: Sequence[int] = (32, 32),
               **kwargs):
    """Builds both axes; `kwargs` go to AxialAttention (num_heads, bn_layer, ...)."""
    super().__init__(name=name)
    self._strides = strides
    self._total_value_depth = int(round(filters * value_expansion))
    total_key_depth = int(round(filters * key_expansion))
    self._height_axis = AxialAttention(
        total_key_depth=total_key_depth, total_value_depth=self._total_value_depth,
        query_shape=query_shape[0], memory_flange=memory_flange[0], name='height_axis', **kwargs)
    self._width_axis = AxialAttention(
        total_key_depth=total_key_depth, total_value_depth=self._total_value_depth,
        query_shape=query_shape[1], memory_flange=memory_flange[1], name='width_axis', **kwargs)

  def call(self, inputs: tf.Tensor, training=False) -> tf.Tensor:
    _, height, width, channels = inputs.shape.as_list()
    depth = self._total_value_depth
    # Height axis: fold the width axis into the batch.
    x = tf.reshape(tf.transpose(inputs, [0, 2, 1, 3]), [-1, height, channels])
    x = self._height_axis(x, training=training)
    x = tf.transpose(tf.reshape(x, [-1, width, height, depth]), [0, 2, 1, 3])
    if self._strides > 1:
      x = x[:, ::self._strides, :, :]
    strided_height = x.shape[1]
    # Width axis: fold the (strided) height axis into the batch.
    x = self._width_axis(tf.reshape(x, [-1, width, depth]), training=training)
    x = tf.reshape(x, [-1, strided_height, width, depth])
    if self._strides > 1:
      x = x[:, :, ::self._strides, :]
    return x
