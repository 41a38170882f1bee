"""Panoptic copy-paste augmentation (kMaX-DeepLab, ECCV 2022).

A random subset of the segments of a second, independently augmented sample
(the "paste" sample) is pasted over the canvas sample: image pixels and labels
of the chosen segments replace the canvas's. As in DeepLab2:

* The number of kept paste segments is uniform in [0, #segments], and which
  segments are kept is a uniformly random subset of that size.
* Per category group, an option then overrides the random choice: 'none' drops
  every segment of the group, 'all' keeps every one, 'random' leaves the random
  choice. Groups are thing classes, stuff classes and void (id ignore*divisor).
* Padded pixels of the paste sample (marked with ignore*divisor + 1, which the
  paste sample is padded with) are never pasted.
* Pasted instance ids i > 0 become divisor - 1 - i, so they cannot collide with
  canvas instance ids; both samples must therefore have instance ids below
  divisor // 2.
"""

from typing import Sequence

import tensorflow as tf

COPY_PASTE_OPTIONS = ('none', 'random', 'all')


def stuff_class_ids(num_classes: int, thing_class_ids: Sequence[int],
                    ignore_label: int) -> list:
  """Classes that are neither things nor the void/ignore class."""
  return sorted(set(range(num_classes)) - set(thing_class_ids) - {ignore_label})


def _is_in(values: tf.Tensor, candidates: Sequence[int]) -> tf.Tensor:
  """bool [N]: values[i] is one of candidates."""
  if len(candidates) == 0:
    return tf.zeros_like(values, dtype=tf.bool)
  candidates = tf.constant(list(candidates), dtype=values.dtype)
  return tf.reduce_any(tf.equal(values[:, tf.newaxis], candidates[tf.newaxis, :]), axis=1)


def _apply_option(keep: tf.Tensor, in_group: tf.Tensor, option: str) -> tf.Tensor:
  if option == 'none':
    return tf.logical_and(keep, tf.logical_not(in_group))
  if option == 'all':
    return tf.logical_or(keep, in_group)
  if option == 'random':
    return keep
  raise ValueError(f'Unknown panoptic copy-paste option {option!r}; expected one of '
                   f'{COPY_PASTE_OPTIONS}.')


def panoptic_copy_paste(image: tf.Tensor,
                        label: tf.Tensor,
                        paste_image: tf.Tensor,
                        paste_label: tf.Tensor,
                        *,
                        descriptor,
                        thing_option: str,
                        stuff_option: str,
                        void_option: str,
                        paste_padding_value: int,
                        seed: tf.Tensor):
  """Pastes randomly chosen segments of one sample onto another.

  Args:
    image: float32 [H, W, 3] canvas image.
    label: int32 [H, W, 1] canvas panoptic ids (semantic * divisor + instance).
    paste_image: float32 [H, W, 3] image to paste from.
    paste_label: int32 [H, W, 1] its ids; padding marked by paste_padding_value.
    descriptor: DatasetDescriptor (num_classes, ignore_label,
      panoptic_label_divisor, class_has_instances_list).
    thing_option, stuff_option, void_option: 'none', 'random' or 'all'.
    paste_padding_value: label value of padded paste pixels.
    seed: int [2] stateless seed.

  Returns:
    (float32 [H, W, 3] image, int32 [H, W, 1] label).
  """
  divisor = descriptor.panoptic_label_divisor
  ignore_label = descriptor.ignore_label
  void_id = ignore_label * divisor
  thing_ids = list(descriptor.class_has_instances_list)
  stuff_ids = stuff_class_ids(descriptor.num_classes, thing_ids, ignore_label)
  seed = tf.cast(tf.reshape(seed, [2]), tf.int64)

  segment_ids, segment_of_pixel = tf.unique(tf.reshape(paste_label, [-1]))
  num_segments = tf.size(segment_ids)
  num_kept = tf.random.stateless_uniform(
      [], tf.random.experimental.stateless_fold_in(seed, 0), minval=0,
      maxval=num_segments + 1, dtype=tf.int32)
  # A uniformly random subset of size num_kept: rank the segments randomly.
  ranking = tf.argsort(tf.random.stateless_uniform(
      [num_segments], tf.random.experimental.stateless_fold_in(seed, 1)))
  rank_of_segment = tf.math.invert_permutation(ranking)
  keep = rank_of_segment < num_kept

  segment_classes = segment_ids // divisor
  keep = _apply_option(keep, tf.equal(segment_ids, paste_padding_value), 'none')
  keep = _apply_option(keep, _is_in(segment_classes, thing_ids), thing_option)
  keep = _apply_option(keep, _is_in(segment_classes, stuff_ids), stuff_option)
  keep = _apply_option(keep, tf.equal(segment_ids, void_id), void_option)
  pasted = tf.reshape(tf.gather(keep, segment_of_pixel), tf.shape(paste_label))

  canvas_instances = label % divisor
  paste_instances = paste_label % divisor
  check = tf.debugging.Assert(
      tf.logical_and(tf.reduce_max(canvas_instances) < divisor // 2,
                     tf.reduce_max(paste_instances) < divisor // 2),
      ['Panoptic copy-paste needs instance ids below label_divisor // 2 =', divisor // 2,
       'in both samples; got maxima', tf.reduce_max(canvas_instances),
       tf.reduce_max(paste_instances)])
  with tf.control_dependencies([check]):
    paste_instances = tf.where(paste_instances == 0, paste_instances,
                               divisor - 1 - paste_instances)
  paste_ids = (paste_label // divisor) * divisor + paste_instances
  label = tf.where(pasted, paste_ids, label)
  image = tf.where(pasted, tf.cast(paste_image, image.dtype), image)
  return image, label
