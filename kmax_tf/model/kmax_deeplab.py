"""kMaX-DeepLab meta architecture: encoder -> pixel decoder -> kMaX decoder -> head.

`KMaXDeepLab` assembles already-built parts (see `builder.build_model` for the
config-driven construction) and reproduces DeepLab2's call contract:

* input: RGB images float32 [B, H, W, 3] in [0, 255]; normalised to [-1, 1];
* inference: the head's predictions plus the post-processed panoptic maps;
* training: the head's predictions plus `auxiliary_outputs_pred`, one dict per
  decoder layer, with mask logits and pixel features resized to the final
  mask-logit resolution (the loss expects that).

Crops of size 32k + 1 keep DeepLab2's feature alignment; other sizes run but
are not what the released models were trained on.
"""

from typing import Any, Dict, Optional

import tensorflow as tf

from kmax_tf import common
from kmax_tf.keras_setup import keras
from kmax_tf.layers import recompute
from kmax_tf.layers import resize
from kmax_tf.model import checkpoint_contract
from kmax_tf.model import post_processor as post_processor_lib

# Key of the optional intermediate-results dict (return_intermediates=True).
INTERMEDIATES_KEY = 'intermediates'
_RESIZED_AUXILIARY_KEYS = (common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY,
                           common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY)


class KMaXDeepLab(keras.Model):
  """The kMaX-DeepLab model.

  Call:
    images: float32 [B, H, W, 3], RGB in [0, 255].
    training: training mode (BatchNorm statistics, drop path, dropout).
    post_processing: (inference only) add the panoptic maps.
    return_intermediates: also return `intermediates` (encoder and pixel
      decoder endpoints, cluster centres per layer, per-layer auxiliary
      predictions at their own resolution), for parity debugging.

  Returns (inference): `semantic_logits` [B, H/s', W/s', C] (when the model
  has a semantic head), `pixel_space_normalized_feature` [B, h, w, D],
  `pixel_space_mask_logits` [B, h, w, N], `transformer_class_logits`
  [B, N, C+1] (all float32) and, with post-processing, `panoptic_pred`,
  `instance_pred`, `semantic_pred` (int32 [B, H, W]), `instance_scores`,
  `semantic_scores` (float32 [B, H, W]). Training adds `auxiliary_outputs_pred`.
  """

  def __init__(self,
               pixel_encoder: keras.layers.Layer,
               pixel_decoder: keras.layers.Layer,
               transformer_decoder: keras.layers.Layer,
               prediction_head: keras.layers.Layer,
               post_processor: Optional[post_processor_lib.KMaXPostProcessor] = None,
               name: str = 'kMaXDeepLab'):
    super().__init__(name=name)
    self._pixel_encoder = pixel_encoder
    self._pixel_decoder = pixel_decoder
    self._transformer_decoder = transformer_decoder
    self._predictor = prediction_head
    self._post_processor = post_processor
    # Validates the root names once, at construction.
    checkpoint_contract.checkpoint_items(
        pixel_encoder, pixel_decoder, transformer_decoder, prediction_head.checkpoint_items)

  @property
  def auxiliary_output_number(self) -> int:
    """Number of auxiliary outputs in training (one per transformer decoder layer)."""
    return self._transformer_decoder.num_layers

  @property
  def checkpoint_items(self) -> Dict[str, Any]:
    """Root children of DeepLab2-compatible checkpoints (see checkpoint_contract)."""
    return checkpoint_contract.checkpoint_items(
        self._pixel_encoder, self._pixel_decoder, self._transformer_decoder,
        self._predictor.checkpoint_items)

  @property
  def post_processor(self) -> Optional[post_processor_lib.KMaXPostProcessor]:
    return self._post_processor

  @property
  def num_mask_slots(self) -> int:
    return self._transformer_decoder.num_mask_slots

  def _forward(self, images: tf.Tensor, training, return_intermediates: bool):
    with recompute.model_part(recompute.PIXEL_ENCODER):
      endpoints = self._pixel_encoder(images, training=training)
    with recompute.model_part(recompute.PIXEL_DECODER):
      endpoints = self._pixel_decoder(endpoints, training=training)
    endpoints = self._transformer_decoder(endpoints, training=training,
                                          return_intermediates=return_intermediates)
    predictions = self._predictor(endpoints, training=training)
    return predictions, endpoints

  def call(self, images: tf.Tensor, training=False, post_processing: bool = True,
           return_intermediates: bool = False) -> Dict[str, Any]:
    if images.shape.rank != 4 or images.shape[-1] != 3:
      raise ValueError(f'KMaXDeepLab expects RGB images [batch, height, width, 3], '
                       f'got shape {images.shape}')
    normalized = tf.cast(images, self.compute_dtype) / 127.5 - 1.0
    predictions, endpoints = self._forward(normalized, training, return_intermediates)
    auxiliary = tuple(predictions.pop(common.PRED_AUXILIARY_OUTPUTS, ()))
    results = dict(predictions)
    if training:
      results[common.PRED_AUXILIARY_OUTPUTS] = self._resize_auxiliary(
          auxiliary, results[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY].shape[1:3])
    elif post_processing and self._post_processor is not None:
      output_size = images.shape[1:3]
      if None in output_size.as_list():
        output_size = tf.shape(images)[1:3]
      else:
        output_size = tuple(output_size.as_list())
      results.update(self._post_processor(results, output_size=output_size))
    if return_intermediates:
      intermediates = {key: value for key, value in endpoints.items()
                       if key != common.PRED_AUXILIARY_OUTPUTS}
      intermediates[common.PRED_AUXILIARY_OUTPUTS] = auxiliary
      results[INTERMEDIATES_KEY] = intermediates
    return results

  @staticmethod
  def _resize_auxiliary(auxiliary, size):
    """Casts auxiliary predictions to float32 and resizes the pixel-space ones to `size`."""
    resized = []
    for outputs in auxiliary:
      outputs = {key: tf.cast(value, tf.float32) for key, value in outputs.items()}
      for key in _RESIZED_AUXILIARY_KEYS:
        outputs[key] = resize.resize_bilinear(outputs[key], list(size))
      resized.append(outputs)
    return tuple(resized)
