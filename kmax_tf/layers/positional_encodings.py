"""Relative positional encodings for axial attention.

References: H. Wang et al., Axial-DeepLab, ECCV 2020; P. Shaw, J. Uszkoreit,
A. Vaswani, Self-Attention with Relative Position Representations, NAACL 2018.
"""

import numpy as np
import tensorflow as tf

from kmax_tf.keras_setup import keras

# Largest relative distance with its own embedding. The table has
# 2 * MAX_SPAN - 1 = 509 rows whatever the input size, which keeps checkpoints
# crop-independent; longer distances share the outermost embedding.
MAX_SPAN = 255


def relative_distance_indices(query_length: int, key_length: int) -> np.ndarray:
  """Embedding-table row for every (query, key) pair of a centred key window.

  Args:
    query_length: number of queries L.
    key_length: number of keys M = L + 2 * flange (keys centred on queries).

  Returns:
    int32 [L, M] array: key position - query position + MAX_SPAN - 1, clipped
    to the table when the span exceeds MAX_SPAN.
  """
  if (key_length - query_length) % 2:
    raise ValueError(f'key_length - query_length must be even, got {key_length}, {query_length}')
  flange = (key_length - query_length) // 2
  distance = np.arange(key_length)[None, :] - (np.arange(query_length) + flange)[:, None]
  distance = distance + MAX_SPAN - 1
  if query_length + flange > MAX_SPAN:
    distance = np.clip(distance, 0, 2 * MAX_SPAN - 2)
  return distance.astype(np.int32)


class RelativePositionalEncoding(keras.layers.Layer):
  """Learned embedding per relative distance, gathered for a query/key grid.

  Weight: `embeddings` float32 [2 * MAX_SPAN - 1, depth].
  Call (input ignored) returns float32 [query_length, key_length, depth].
  """

  def __init__(self, query_length: int, key_length: int, depth: int, name: str,
               initialization_std: float = 1.0, conv_kernel_weight_decay: float = 0.0):
    super().__init__(name=name)
    self._indices = relative_distance_indices(query_length, key_length)
    self._depth = depth
    self._initializer = keras.initializers.TruncatedNormal(stddev=initialization_std)
    self._regularizer = (
        keras.regularizers.l2(conv_kernel_weight_decay) if conv_kernel_weight_decay else None)

  def build(self, input_shape):
    del input_shape
    self._embeddings = self.add_weight(
        name='embeddings', shape=(2 * MAX_SPAN - 1, self._depth),
        initializer=self._initializer, regularizer=self._regularizer, trainable=True)
    super().build(None)

  def call(self, inputs=None) -> tf.Tensor:
    del inputs
    return tf.gather(self._embeddings, self._indices)
