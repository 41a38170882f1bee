"""Ground truth of the MaX-DeepLab losses at the prediction resolution.

Turns the sample generator's label maps into per-pixel mask-id one-hots over
`max_thing_id` thing masks followed by one mask per stuff class (DeepLab2's
mask order), plus the per-mask classes and areas the losses need.
"""

import dataclasses
from typing import Dict, List, Sequence

import tensorflow as tf

from kmax_tf import common
from kmax_tf.losses import loss_functions


def stuff_class_ids(num_thing_stuff_classes: int, thing_class_ids: Sequence[int],
                    ignore_label: int) -> List[int]:
  """Sorted stuff class ids: the non-void classes that are not things.

  The non-void classes are [0, num_thing_stuff_classes) when the void label lies
  outside that range (Cityscapes, 255), else [0, num_thing_stuff_classes] minus
  the void label (COCO/ADE20K, 0).
  """
  if ignore_label >= num_thing_stuff_classes:
    candidates = set(range(num_thing_stuff_classes))
  else:
    candidates = set(range(num_thing_stuff_classes + 1)) - {ignore_label}
  return sorted(candidates - set(thing_class_ids))


@dataclasses.dataclass(frozen=True)
class MaskGroundTruth:
  """Ground truth at the output resolution, P = h * w pixels, M masks.

  Attributes:
    pixel_thing_mask: float32 [B, P], 1 on pixels of (non-crowd) thing masks.
    pixel_non_void_mask: float32 [B, P], 1 on pixels whose class is not void.
    pixel_mask_id_one_hot: float32 [B, P, M], the mask each pixel belongs to;
      all-zero on void and crowd pixels.
    pixel_mask_id: int32 [B, P], the same as an index into the M masks, -1 on
      void and crowd pixels.
    mask_class: int32 [B, M], dataset class of each mask, -1 for masks absent at
      this resolution (padding, missing stuff, subsampled away).
    mask_non_void: float32 [B, M], 1 for present masks.
    mask_class_one_hot: float32 [B, M, K], one-hot over the thing + stuff
      classes in (thing ids, stuff ids) order; zero for absent masks.
    mask_area: float32 [B, M, 1], pixels per mask.
    pixel_inverse_mask_area: float32 [B, P], P / area of the pixel's mask
      (area clipped at 1).
  """

  pixel_thing_mask: tf.Tensor
  pixel_non_void_mask: tf.Tensor
  pixel_mask_id_one_hot: tf.Tensor
  pixel_mask_id: tf.Tensor
  mask_class: tf.Tensor
  mask_non_void: tf.Tensor
  mask_class_one_hot: tf.Tensor
  mask_area: tf.Tensor
  pixel_inverse_mask_area: tf.Tensor


def prepare_mask_ground_truth(y_true: Dict[str, tf.Tensor], output_hw: Sequence[int],
                              thing_class_ids: Sequence[int], stuff_ids: Sequence[int],
                              ignore_label: int) -> MaskGroundTruth:
  """Builds `MaskGroundTruth` from the sample generator's outputs.

  Args:
    y_true: dict with `semantic_gt` int [B, H, W], `thing_id_mask_gt` int
      [B, H, W] (mask id per thing pixel, -1 elsewhere) and `thing_id_class_gt`
      [B, T] (class per thing mask id, -1 padded; float or int).
    output_hw: (h, w) of the predictions; labels are strided-subsampled to it.
    thing_class_ids: the thing class ids.
    stuff_ids: the stuff class ids (see `stuff_class_ids`).
    ignore_label: the void class id.

  Returns:
    MaskGroundTruth with M = T + len(stuff_ids).
  """
  thing_stuff_ids = list(thing_class_ids) + list(stuff_ids)
  max_thing_id = y_true[common.GT_THING_ID_CLASS_KEY].shape[-1]
  if max_thing_id is None:
    raise ValueError(f'{common.GT_THING_ID_CLASS_KEY} needs a static last dimension.')
  num_pixels = int(output_hw[0]) * int(output_hw[1])
  batch_size = tf.shape(y_true[common.GT_SEMANTIC_KEY])[0]

  semantic = loss_functions.strided_downsample(y_true[common.GT_SEMANTIC_KEY], output_hw)
  semantic = tf.reshape(tf.cast(semantic, tf.int32), [batch_size, num_pixels])
  pixel_non_void_mask = tf.cast(tf.not_equal(semantic, ignore_label), tf.float32)
  stuff_one_hot = tf.cast(
      tf.equal(semantic[:, :, tf.newaxis], tf.constant(stuff_ids, tf.int32)), tf.float32)

  thing_id = loss_functions.strided_downsample(y_true[common.GT_THING_ID_MASK_KEY], output_hw)
  thing_id = tf.reshape(tf.cast(thing_id, tf.int32), [batch_size, num_pixels])
  pixel_thing_mask = tf.cast(tf.not_equal(thing_id, -1), tf.float32)
  thing_one_hot = tf.one_hot(thing_id, max_thing_id, dtype=tf.float32)
  pixel_mask_id_one_hot = tf.concat([thing_one_hot, stuff_one_hot], axis=-1)
  pixel_mask_id = tf.where(tf.reduce_max(pixel_mask_id_one_hot, axis=-1) > 0,
                           tf.argmax(pixel_mask_id_one_hot, axis=-1, output_type=tf.int32), -1)

  mask_area = tf.reduce_sum(pixel_mask_id_one_hot, axis=1)[:, :, tf.newaxis]
  mask_present = mask_area[:, :, 0] > 0.5
  pixel_mask_area = tf.einsum('bpm,bmd->bp', pixel_mask_id_one_hot, mask_area)
  pixel_inverse_mask_area = num_pixels / tf.maximum(pixel_mask_area, 1.0)

  thing_class = tf.reshape(tf.cast(y_true[common.GT_THING_ID_CLASS_KEY], tf.int32),
                           [batch_size, max_thing_id])
  stuff_class = tf.tile(tf.constant(stuff_ids, tf.int32)[tf.newaxis, :], [batch_size, 1])
  mask_class = tf.concat([thing_class, stuff_class], axis=-1)
  mask_class = tf.where(mask_present, mask_class, -1)
  # Class -1 matches no id, so absent masks get an all-zero one-hot.
  mask_class_one_hot = tf.cast(
      tf.equal(mask_class[:, :, tf.newaxis], tf.constant(thing_stuff_ids, tf.int32)),
      tf.float32)
  mask_non_void = tf.cast(mask_class > -1, tf.float32)
  return MaskGroundTruth(
      pixel_thing_mask=pixel_thing_mask,
      pixel_non_void_mask=pixel_non_void_mask,
      pixel_mask_id_one_hot=pixel_mask_id_one_hot,
      pixel_mask_id=pixel_mask_id,
      mask_class=mask_class,
      mask_non_void=mask_non_void,
      mask_class_one_hot=mask_class_one_hot,
      mask_area=mask_area,
      pixel_inverse_mask_area=pixel_inverse_mask_area)
