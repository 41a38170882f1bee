"""Panoptic post-processing of kMaX-DeepLab predictions (DeepLab2's rules).

The network predicts, per image, N mask slots: pixel-space mask logits
[h, w, N] at a low output stride and class logits [N, C + 1] whose last channel
is the void ("no object") class. Two DeepLab2 procedures turn them into maps:

* pixelwise: every pixel takes the argmax mask slot among slots whose class
  confidence passes a threshold; pixels with a low mask probability are void.
* maskwise: slots are sorted by class confidence^a * mask score^b and their
  thresholded binary masks are pasted onto an empty canvas in that order; a
  mask that would lose too many pixels to earlier masks is dropped, and thing
  and stuff classes use separate confidence thresholds.

Both are followed by area filtering (small thing instances / stuff regions
become void) and panoptic id composition `semantic * label_divisor + id`.
The semantic map always comes from an unthresholded pixelwise pass.

The implementation is batch-vectorised and XLA-compatible: counts use
`unsorted_segment_sum` with static segment numbers (DeepLab2 uses `bincount`,
whose output size is data dependent), and the maskwise paste is reduced to a
short sequential loop over slots on [B, N] tensors (see `_maskwise_maps`).
"""

import dataclasses
from typing import Dict, Optional, Sequence, Tuple

import tensorflow as tf

from kmax_tf import backend
from kmax_tf import common
from kmax_tf.keras_setup import keras
from kmax_tf.layers import resize

# DeepLab2 pushes the logits of filtered slots down by this constant.
_FILTERED_SLOT_LOGIT = -99999.0

PIXELWISE = 'pixelwise'
MASKWISE = 'maskwise'
# `evaluator_options.transformer_post_processing` choices; config validation reads this.
POST_PROCESSING_MODES = (PIXELWISE, MASKWISE)


@dataclasses.dataclass(frozen=True)
class PostProcessingOptions:
  """Thresholds and dataset facts of the panoptic post-processing.

  Attributes:
    thing_class_ids: dataset ids of thing classes, in descriptor order. The
      class-logit channel k (k < number of non-void channels) means dataset
      class `(thing_class_ids + stuff_class_ids)[k]`, as in DeepLab2.
    void_label: dataset id of void (the descriptor's ignore label).
    label_divisor: panoptic label divisor.
    output_size: default [height, width] of the output maps (DeepLab2: the eval
      crop size); None means "ask the caller".
    transformer_post_processing: 'pixelwise' or 'maskwise'.
    pixel_confidence_threshold: minimum mask probability of a pixel.
    transformer_class_confidence_threshold: pixelwise class threshold.
    thing_area_limit: thing instances with fewer pixels become void (0: off).
    stuff_area_limit: stuff regions with fewer pixels become void (0: off).
    class_threshold_thing: maskwise class threshold for thing predictions.
    class_threshold_stuff: maskwise class threshold for stuff predictions.
    overlapping_threshold: maskwise: a mask is kept only if more than this
      fraction of its pixels is still free when it is pasted.
    reorder_class_weight: maskwise exponent of the class confidence.
    reorder_mask_weight: maskwise exponent of the mask score.
  """

  thing_class_ids: Tuple[int, ...]
  void_label: int
  label_divisor: int
  output_size: Optional[Tuple[int, int]] = None
  transformer_post_processing: str = PIXELWISE
  pixel_confidence_threshold: float = 0.4
  transformer_class_confidence_threshold: float = 0.7
  thing_area_limit: int = 0
  stuff_area_limit: int = 0
  class_threshold_thing: float = 0.7
  class_threshold_stuff: float = 0.7
  overlapping_threshold: float = 0.5
  reorder_class_weight: float = 1.0
  reorder_mask_weight: float = 0.0

  def __post_init__(self):
    if self.transformer_post_processing not in POST_PROCESSING_MODES:
      raise ValueError(
          'evaluator_options.transformer_post_processing must be '
          f"'{PIXELWISE}' or '{MASKWISE}', got {self.transformer_post_processing!r}")
    if self.label_divisor <= 0:
      raise ValueError(f'label_divisor must be positive, got {self.label_divisor}')
    if self.output_size is not None and (
        len(self.output_size) != 2 or min(self.output_size) <= 0):
      raise ValueError(f'output_size must be [height, width], got {self.output_size}')

  @classmethod
  def from_config(cls, config, dataset_descriptor) -> 'PostProcessingOptions':
    """Options from an ExperimentOptions proto and a DatasetDescriptor."""
    evaluator = config.evaluator_options
    mode = evaluator.transformer_post_processing
    maskwise = evaluator.maskwise_postprocessing
    if mode == MASKWISE and not evaluator.HasField('maskwise_postprocessing'):
      raise ValueError(
          "evaluator_options.transformer_post_processing is 'maskwise' but "
          'evaluator_options.maskwise_postprocessing is not set')
    crop = tuple(int(v) for v in config.eval_dataset_options.crop_size)
    if crop and len(crop) != 2:
      raise ValueError(
          f'eval_dataset_options.crop_size must be [height, width], got {list(crop)}')
    return cls(
        thing_class_ids=tuple(dataset_descriptor.class_has_instances_list),
        void_label=dataset_descriptor.ignore_label,
        label_divisor=dataset_descriptor.panoptic_label_divisor,
        output_size=crop or None,
        transformer_post_processing=mode,
        pixel_confidence_threshold=evaluator.pixel_confidence_threshold,
        transformer_class_confidence_threshold=(
            evaluator.transformer_class_confidence_threshold),
        thing_area_limit=evaluator.thing_area_limit,
        stuff_area_limit=evaluator.stuff_area_limit,
        class_threshold_thing=maskwise.transformer_class_confidence_threshold_thing,
        class_threshold_stuff=maskwise.transformer_class_confidence_threshold_stuff,
        overlapping_threshold=maskwise.overlapping_threshold,
        reorder_class_weight=maskwise.reorder_class_weight,
        reorder_mask_weight=maskwise.reorder_mask_weight)


def thing_stuff_class_ids(num_non_void_classes: int, thing_class_ids: Sequence[int],
                          void_label: int) -> Tuple[int, ...]:
  """Dataset class id of each non-void class channel: things first, then stuff.

  Args:
    num_non_void_classes: class-logit channels without the trailing void one.
    thing_class_ids: dataset ids of thing classes.
    void_label: dataset id of void; excluded from stuff when it is a real id.

  Returns:
    A tuple of length `num_non_void_classes`.
  """
  if void_label >= num_non_void_classes:
    candidates = range(num_non_void_classes)
  else:
    candidates = [c for c in range(num_non_void_classes + 1) if c != void_label]
  things = set(thing_class_ids)
  stuff = sorted(set(candidates) - things)
  ids = tuple(thing_class_ids) + tuple(stuff)
  if len(ids) != num_non_void_classes:
    raise ValueError(
        f'{len(thing_class_ids)} thing + {len(stuff)} stuff classes do not match the '
        f'{num_non_void_classes} non-void class logits (check the dataset descriptor).')
  return ids


def resize_align_corners(images: tf.Tensor, size) -> tf.Tensor:
  """Bilinear resize with aligned corners. images: float [B, h, w, C]."""
  static_size = isinstance(size, (list, tuple)) and all(isinstance(v, int) for v in size)
  if static_size and backend.resize_by_gathers():
    return resize.bilinear_align_corners_by_gathers(tf.cast(images, tf.float32), size)
  return tf.compat.v1.image.resize_bilinear(images, size, align_corners=True)


def _per_image_counts_map(index_map: tf.Tensor, num_values: int) -> tf.Tensor:
  """Pixel count of each pixel's value within its image.

  Args:
    index_map: int32 [B, H, W], values in [0, num_values).
    num_values: static number of distinct values.

  Returns:
    int32 [B, H, W]: for every pixel, how many pixels of its image share its value.
  """
  batch_size = tf.shape(index_map)[0]
  offsets = tf.range(batch_size, dtype=tf.int32)[:, None, None] * num_values
  segment_ids = index_map + offsets
  counts = tf.math.unsorted_segment_sum(
      tf.ones_like(segment_ids), segment_ids, batch_size * num_values)
  return tf.gather(counts, segment_ids)


def _class_prediction(class_logits: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """Arg-max non-void class and its probability. class_logits: f32 [B, N, C+1]."""
  probs = tf.nn.softmax(class_logits, axis=-1)[..., :-1]
  return tf.argmax(probs, axis=-1, output_type=tf.int32), tf.reduce_max(probs, axis=-1)


class _Maps:
  """Per-pixel results before merging: all [B, H, W]."""

  def __init__(self, slot, class_index, confident, instance_score, semantic_score,
               nonempty):
    self.slot = slot                      # int32 mask slot (in output order)
    self.class_index = class_index        # int32 non-void class channel of the slot
    self.confident = confident            # bool, pixel belongs to a kept slot
    self.instance_score = instance_score  # float32
    self.semantic_score = semantic_score  # float32
    self.nonempty = nonempty              # bool [B]: image has a detection
    self.argmax_slot = None               # int32 arg-max slot of the logits, if computed


def _pixelwise_maps(full_logits, class_pred, class_conf, class_threshold,
                    pixel_threshold) -> _Maps:
  """DeepLab2's pixelwise assignment. full_logits: f32 [B, H, W, N]."""
  detected = tf.cast(class_conf >= class_threshold, tf.float32)  # [B, N]
  nonempty = tf.reduce_any(detected > 0.5, axis=-1)
  kept = detected[:, None, None, :]
  # Same arithmetic as DeepLab2 so that argmax ties and thresholds agree bitwise.
  detected_logits = full_logits * kept + _FILTERED_SLOT_LOGIT * (1.0 - kept)
  confidence = tf.reduce_max(tf.nn.softmax(detected_logits, axis=-1), axis=-1)
  confident = confidence > pixel_threshold
  assigned_to_kept = tf.equal(tf.reduce_max(full_logits, axis=-1),
                              tf.reduce_max(detected_logits, axis=-1))
  _, slot = _max_and_argmax(detected_logits)
  semantic_score = tf.gather(class_conf, slot, batch_dims=1)
  return _Maps(slot, tf.gather(class_pred, slot, batch_dims=1),
               tf.logical_and(confident, assigned_to_kept), confidence,
               semantic_score, nonempty)


def _kept_slots_from_pair_counts(area, pair_counts, confident, overlapping_threshold):
  """Sequential maskwise keep decisions from areas and pairwise overlaps.

  Slots are in paste order. A pixel lies in at most two binary masks (see
  `_maskwise_maps`), so the pixels of slot k that earlier kept slots already
  took are exactly sum_{a < k} kept[a] * pair_counts[a, k].

  Args:
    area: float32 [B, N], pixels of each binary mask.
    pair_counts: float32 [B, N, N], [a, b] = pixels in masks a and b (a < b).
    confident: bool [B, N], the slot's class passes its threshold.
    overlapping_threshold: python float.

  Returns:
    bool [B, N].
  """
  num_slots = area.shape[-1]
  threshold = tf.constant(overlapping_threshold, tf.float32)

  def body(k, kept):
    taken = tf.reduce_sum(kept * pair_counts[:, :, k], axis=-1)
    free = area[:, k] - taken
    keep_k = tf.logical_and(confident[:, k], free > area[:, k] * threshold)
    kept += tf.cast(keep_k, tf.float32)[:, None] * tf.one_hot(k, num_slots)[None, :]
    return k + 1, kept

  _, kept = tf.while_loop(
      lambda k, _: k < num_slots, body,
      (tf.constant(0), tf.zeros_like(area)), maximum_iterations=num_slots)
  return kept > 0.5


def _kept_slots_by_painting(binary_masks, confident, overlapping_threshold):
  """Sequential maskwise paste (general case: any number of masks per pixel).

  Args:
    binary_masks: float32 [B, H, W, N] in paste order.
    confident: bool [B, N].
    overlapping_threshold: python float.

  Returns:
    int32 [B, H, W] index of the pasted slot plus one (0: no slot).
  """
  num_slots = binary_masks.shape[-1]
  threshold = tf.constant(overlapping_threshold, tf.float32)
  confident = tf.cast(confident, tf.float32)

  def body(k, canvas):
    mask = binary_masks[..., k]
    free = mask * tf.cast(tf.equal(canvas, 0), tf.float32)
    keep = confident[:, k] * tf.cast(
        tf.reduce_sum(free, axis=[1, 2]) > tf.reduce_sum(mask, axis=[1, 2]) * threshold,
        tf.float32)
    canvas += tf.cast(free * keep[:, None, None], tf.int32) * (k + 1)
    return k + 1, canvas

  _, canvas = tf.while_loop(
      lambda k, _: k < num_slots, body,
      (tf.constant(0), tf.zeros(tf.shape(binary_masks)[:3], tf.int32)),
      maximum_iterations=num_slots)
  return canvas


def _max_and_argmax(values: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """Max along the last axis and its first index, as `tf.argmax` (faster under XLA).

  Args:
    values: float [..., N], no NaN.

  Returns:
    (float [...], int32 [...]).
  """
  num = values.shape[-1]
  largest = tf.reduce_max(values, axis=-1, keepdims=True)
  index = tf.reduce_min(
      tf.where(tf.equal(values, largest), tf.range(num, dtype=tf.int32), num), axis=-1)
  return largest[..., 0], index


def _top2(logits: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """The two largest values and their indices along the last axis (lower index first on ties).

  Same result as `tf.math.top_k(logits, 2)` (and as two arg-max passes), but
  built from max/min reductions, which XLA fuses into few passes over the
  input; XLA's sort-based top-k and its arg-max are much slower on CPU.

  Args:
    logits: float [..., N], no NaN.

  Returns:
    (values float [..., 2], indices int32 [..., 2]).
  """
  positions = tf.range(logits.shape[-1], dtype=tf.int32)
  first_value, first = _max_and_argmax(logits)
  masked = tf.where(tf.equal(positions, first[..., None]),
                    tf.constant(-float('inf'), logits.dtype), logits)
  second_value, second = _max_and_argmax(masked)
  return tf.stack([first_value, second_value], axis=-1), tf.stack([first, second], axis=-1)


def _maskwise_maps(low_res_logits, full_logits, class_pred, class_conf,
                   options: PostProcessingOptions, num_things: int) -> _Maps:
  """DeepLab2's maskwise paste.

  Args:
    low_res_logits: f32 [B, h, w, N] network mask logits (mask scores use them).
    full_logits: f32 [B, H, W, N] the same resized to the output size.
    class_pred: int32 [B, N] non-void class channel per slot.
    class_conf: f32 [B, N] its probability.
    options: the thresholds.
    num_things: number of thing channels (channels below it are things).

  Returns:
    _Maps with slots numbered in paste order, as DeepLab2 numbers them.
  """
  num_slots = full_logits.shape[-1]
  pixel_threshold = options.pixel_confidence_threshold
  confident_thing = class_conf >= options.class_threshold_thing
  confident_stuff = class_conf >= options.class_threshold_stuff
  nonempty = tf.reduce_any(tf.logical_or(confident_thing, confident_stuff), axis=-1)

  # Mask score: mean probability over the pixels of the thresholded mask.
  low_probs = tf.nn.softmax(low_res_logits, axis=-1)
  low_detected = tf.cast(low_probs > pixel_threshold, tf.float32)
  mask_score = tf.math.divide_no_nan(
      tf.reduce_sum(low_probs * low_detected, axis=[1, 2]),
      tf.reduce_sum(low_detected, axis=[1, 2]))
  reorder_score = (tf.pow(class_conf, options.reorder_class_weight) *
                   tf.pow(mask_score, options.reorder_mask_weight))
  order = tf.argsort(reorder_score, axis=-1, direction='DESCENDING', stable=True)
  class_pred = tf.gather(class_pred, order, batch_dims=1)
  class_conf = tf.gather(class_conf, order, batch_dims=1)
  is_thing = class_pred < num_things
  confident = tf.where(is_thing, tf.gather(confident_thing, order, batch_dims=1),
                       tf.gather(confident_stuff, order, batch_dims=1))

  # Probabilities sum to one, so at most ceil(1/t) - 1 of them exceed t. For the
  # usual t > 1/3 a pixel lies in at most two masks, and the paste reduces to
  # per-slot areas and pairwise overlap counts.
  argmax_slot = None
  if pixel_threshold * 3.0 > 1.0 + 1e-5:
    # Only the two largest probabilities matter: softmax of the two top logits,
    # without materialising the [B, H, W, N] probabilities.
    top_logits, top_slots = _top2(full_logits)
    max_logit = top_logits[..., :1]
    sum_exp = tf.reduce_sum(tf.exp(full_logits - max_logit), axis=-1, keepdims=True)
    top_probs = tf.exp(top_logits - max_logit) / sum_exp
    instance_score = top_probs[..., 0]
    argmax_slot = top_slots[..., 0]
    # rank[b, slot] = paste position of the slot (inverse permutation of order).
    batch_size = tf.shape(order)[0]
    rank = tf.argsort(order, axis=-1, stable=True)
    valid = top_probs > pixel_threshold  # [B, H, W, 2]; valid[..., 1] implies [..., 0]
    top_ranks = tf.gather(rank, top_slots, batch_dims=1)
    first = tf.reduce_min(top_ranks, axis=-1)
    second = tf.reduce_max(top_ranks, axis=-1)
    single = tf.logical_and(valid[..., 0], tf.logical_not(valid[..., 1]))
    both = valid[..., 1]
    offsets = tf.range(batch_size)[:, None, None]
    # Areas: every valid candidate counts for its slot.
    area = tf.math.unsorted_segment_sum(
        tf.cast(tf.reshape(valid, [-1]), tf.float32),
        tf.reshape(top_ranks + offsets[..., None] * num_slots, [-1]),
        batch_size * num_slots)
    area = tf.reshape(area, [batch_size, num_slots])
    pair_counts = tf.math.unsorted_segment_sum(
        tf.cast(tf.reshape(both, [-1]), tf.float32),
        tf.reshape((offsets * num_slots + first) * num_slots + second, [-1]),
        batch_size * num_slots * num_slots)
    pair_counts = tf.reshape(pair_counts, [batch_size, num_slots, num_slots])
    kept = _kept_slots_from_pair_counts(area, pair_counts, confident,
                                        options.overlapping_threshold)
    kept_first = tf.gather(kept, first, batch_dims=1)
    kept_second = tf.gather(kept, second, batch_dims=1)
    # With one candidate, top_ranks[..., 0] is the slot whatever its rank order.
    only = top_ranks[..., 0]
    slot = tf.where(single, only, tf.where(kept_first, first, second))
    pasted = tf.logical_or(
        tf.logical_and(single, tf.gather(kept, only, batch_dims=1)),
        tf.logical_and(both, tf.logical_or(kept_first, kept_second)))
  else:
    probs = tf.nn.softmax(full_logits, axis=-1)
    instance_score = tf.reduce_max(probs, axis=-1)
    binary_masks = tf.gather(tf.cast(probs > pixel_threshold, tf.float32), order,
                             batch_dims=1, axis=3)
    canvas = _kept_slots_by_painting(binary_masks, confident,
                                     options.overlapping_threshold)
    pasted = canvas > 0
    slot = canvas - 1
  slot = tf.where(pasted, slot, 0)
  semantic_score = tf.where(pasted, tf.gather(class_conf, slot, batch_dims=1), 0.0)
  maps = _Maps(slot, tf.gather(class_pred, slot, batch_dims=1), pasted,
               instance_score, semantic_score, nonempty)
  maps.argmax_slot = argmax_slot
  return maps


def _merge(maps: _Maps, class_ids: Tuple[int, ...], num_things: int, num_slots: int,
           options: PostProcessingOptions) -> Dict[str, tf.Tensor]:
  """Area filtering and panoptic id composition (DeepLab2's merge step)."""
  nonempty = maps.nonempty[:, None, None]
  is_thing = maps.class_index < num_things
  thing = tf.logical_and(tf.logical_and(maps.confident, is_thing), nonempty)
  stuff = tf.logical_and(tf.logical_and(maps.confident, tf.logical_not(is_thing)), nonempty)
  semantic = tf.gather(tf.constant(class_ids, tf.int32), maps.class_index)
  # Empty images: DeepLab2 returns mask id 1 (slot 0 plus one) and class 0.
  semantic = tf.where(nonempty, semantic, 0)
  instance = tf.where(nonempty, maps.slot + 1, 1)

  zero = tf.zeros_like(semantic)
  thing_instance = tf.where(thing, instance, zero)
  thing_semantic = tf.where(thing, semantic + 1, zero)
  stuff_semantic = tf.where(stuff, semantic + 1, zero)
  if options.stuff_area_limit > 0:
    counts = _per_image_counts_map(stuff_semantic, max(class_ids) + 2)
    stuff_semantic = tf.where(counts >= options.stuff_area_limit, stuff_semantic, zero)
  if options.thing_area_limit > 0:
    counts = _per_image_counts_map(thing_instance, num_slots + 1)
    large = counts >= options.thing_area_limit
    thing_instance = tf.where(large, thing_instance, zero)
    thing_semantic = tf.where(large, thing_semantic, zero)
  # Exactly one of the two is non-zero on a labelled pixel.
  panoptic_semantic = thing_semantic + stuff_semantic - 1
  panoptic_semantic = tf.where(panoptic_semantic < 0, options.void_label, panoptic_semantic)
  panoptic = panoptic_semantic * options.label_divisor + thing_instance

  instance_score = tf.where(nonempty, maps.instance_score, 0.0)
  semantic_score = tf.where(nonempty, maps.semantic_score, 0.0)
  return {
      common.PRED_PANOPTIC_KEY: panoptic,
      common.PRED_INSTANCE_KEY: instance,
      common.PRED_INSTANCE_SCORES_KEY: instance_score,
      common.PRED_SEMANTIC_SCORES_KEY: semantic_score,
  }


def panoptic_predictions(pixel_space_mask_logits: tf.Tensor,
                         transformer_class_logits: tf.Tensor,
                         options: PostProcessingOptions,
                         output_size=None) -> Dict[str, tf.Tensor]:
  """Panoptic, instance and semantic maps from kMaX predictions.

  Args:
    pixel_space_mask_logits: float [B, h, w, N] mask logits.
    transformer_class_logits: float [B, N, C + 1] class logits, void last.
    options: PostProcessingOptions.
    output_size: [H, W] of the maps (python ints or int32 scalars); default
      `options.output_size`. The logits are resized to it with aligned corners.

  Returns:
    {panoptic_pred, instance_pred, semantic_pred: int32 [B, H, W],
     instance_scores, semantic_scores: float32 [B, H, W]}.
  """
  output_size = output_size if output_size is not None else options.output_size
  if output_size is None:
    raise ValueError('panoptic_predictions needs output_size (or options.output_size)')
  mask_logits = tf.cast(pixel_space_mask_logits, tf.float32)
  class_logits = tf.cast(transformer_class_logits, tf.float32)
  if mask_logits.shape.rank != 4 or class_logits.shape.rank != 3:
    raise ValueError(
        'expected pixel_space_mask_logits [B, h, w, N] and transformer_class_logits '
        f'[B, N, C+1], got {mask_logits.shape} and {class_logits.shape}')
  num_slots = mask_logits.shape[-1]
  if class_logits.shape[1] != num_slots:
    raise ValueError(f'{num_slots} mask slots in the mask logits but {class_logits.shape[1]} '
                     'in the class logits')
  # Fails early, with a clear message, on inconsistent class channels.
  thing_stuff_class_ids(class_logits.shape[-1] - 1, options.thing_class_ids, options.void_label)

  full_logits = resize_align_corners(mask_logits, output_size)
  maps_function = _maps_from_logits
  if backend.compiles_post_processing_maps():
    # The rest is elementwise work and reductions on [B, H, W, N] and
    # [B, H, W] tensors: one XLA kernel reads the logits a few times instead of
    # a dozen TensorFlow ops each streaming them through memory (the resize
    # stays in TensorFlow: XLA lowers it to a slow convolution on CPU).
    maps_function = _compiled_maps_from_logits
  return maps_function(mask_logits, full_logits, class_logits, options)


def _maps_from_logits(mask_logits, full_logits, class_logits,
                      options: PostProcessingOptions) -> Dict[str, tf.Tensor]:
  """panoptic_predictions after the resize; full_logits: f32 [B, H, W, N]."""
  num_slots = mask_logits.shape[-1]
  num_non_void = class_logits.shape[-1] - 1
  class_ids = thing_stuff_class_ids(num_non_void, options.thing_class_ids, options.void_label)
  num_things = len(options.thing_class_ids)
  class_pred, class_conf = _class_prediction(class_logits)

  if options.transformer_post_processing == MASKWISE:
    maps = _maskwise_maps(mask_logits, full_logits, class_pred, class_conf, options,
                          num_things)
  else:
    maps = _pixelwise_maps(full_logits, class_pred, class_conf,
                           options.transformer_class_confidence_threshold,
                           options.pixel_confidence_threshold)
  results = _merge(maps, class_ids, num_things, num_slots, options)
  # The semantic map: unthresholded pixelwise assignment (every slot detected).
  semantic_slot = maps.argmax_slot
  if semantic_slot is None:
    _, semantic_slot = _max_and_argmax(full_logits)
  results[common.PRED_SEMANTIC_KEY] = tf.gather(
      tf.constant(class_ids, tf.int32), tf.gather(class_pred, semantic_slot, batch_dims=1))
  return results


_compiled_maps_from_logits = tf.function(_maps_from_logits, jit_compile=True)

# Graph version for eager callers (DeepLab2 also runs its post-processing as a
# tf.function); inside an outer tf.function or XLA cluster it is inlined. One
# trace per (options, output size, input signature).
_panoptic_predictions_function = tf.function(panoptic_predictions)


class KMaXPostProcessor(keras.layers.Layer):
  """Keras wrapper of `panoptic_predictions` (no weights), run as a tf.function."""

  def __init__(self, options: PostProcessingOptions, name: str = 'kmax_post_processor'):
    super().__init__(name=name, trainable=False)
    self._options = options

  @property
  def options(self) -> PostProcessingOptions:
    return self._options

  def call(self, result_dict: Dict[str, tf.Tensor], output_size=None) -> Dict[str, tf.Tensor]:
    """result_dict holds pixel_space_mask_logits and transformer_class_logits."""
    if isinstance(output_size, (list, tuple)):
      output_size = tuple(int(v) for v in output_size)
    # Inlined for other runtimes: tf2onnx cannot convert nested function calls.
    function = (_panoptic_predictions_function if backend.compiles_helpers()
                else panoptic_predictions)
    return function(
        result_dict[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY],
        result_dict[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY], self._options,
        output_size=output_size)

