"""Turns decoded records into the training/evaluation samples of kMaX-DeepLab.

The sample keys, dtypes and values are DeepLab2's (PanopticSampleGenerator):
evaluation samples equal DeepLab2's bit for bit. For one decoded record the
generator resizes/augments/pads/crops image and label (preprocessing), applies
panoptic copy-paste when configured, then derives the ground truth:

  image                  float32 [h, w, 3]   RGB 0..255, padding 127.5
  semantic_gt            int32   [h, w]      label // divisor (crowd keeps its class)
  panoptic_gt            int32   [h, w]      panoptic ids, crowd included
  is_crowd_gt            bool    [h, w]      thing pixels with instance id 0
  semantic_loss_weight   float32 [h, w]      1, or the small-instance weight
  center_loss_weight     float32 [h, w]      not crowd and not ignore
  regression_loss_weight float32 [h, w]      non-crowd thing pixels
  instance_center_gt     float32 [h, w]      Gaussian heatmap at instance centres
  instance_regression_gt float32 [h, w, 2]   (dy, dx) from pixel to its centre
  thing_id_mask_gt       int32   [h, w]      0.. per thing instance, -1 elsewhere
  thing_id_class_gt      float32 [max_thing_id] class of each thing id, -1 padded
and, at evaluation only: resized_image float32 [rh, rw, 3], image_name string,
size_raw int32 [2], semantic_raw / panoptic_raw int32 [H, W], is_crowd_raw bool
[H, W] (the unresized record).

Thing instances are ids whose class is not the ignore label and whose instance
part is non-zero; crowd regions (thing class, instance 0) are ignored in the
panoptic targets. Dataset constants come from the DatasetDescriptor.
"""

from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from kmax_tf import common
from kmax_tf.data import autoaugment
from kmax_tf.data import copy_paste
from kmax_tf.data import preprocessing
from kmax_tf.data import tfrecord_decoder


def gaussian_kernel(sigma: float):
  """The centre heatmap kernel: float32 [size, size], its peak near (3s+1, 3s+1)."""
  size = int(6 * sigma + 3)
  coords = np.arange(size, dtype=np.float64)
  peak = 3 * sigma + 1
  kernel = np.exp(-((coords[np.newaxis, :] - peak)**2 + (coords[:, np.newaxis] - peak)**2) /
                  (2 * sigma**2))
  return kernel.astype(np.float32), size


def _is_thing_class(classes: tf.Tensor, descriptor) -> tf.Tensor:
  """bool, same shape as int32 `classes`: whether each class has instances."""
  thing_ids = list(descriptor.class_has_instances_list)
  table_size = max([descriptor.num_classes, *(c + 1 for c in thing_ids)])
  table = np.zeros([table_size], bool)
  table[thing_ids] = True
  # A lookup table: cheaper than comparing every pixel with every thing class.
  in_table = tf.logical_and(classes >= 0, classes < table_size)
  looked_up = tf.gather(tf.constant(table), tf.clip_by_value(classes, 0, table_size - 1))
  return tf.logical_and(in_table, looked_up)


def split_panoptic_label(label: tf.Tensor, descriptor):
  """Semantic classes, crowd-free panoptic ids, thing mask and crowd mask.

  Args:
    label: int32 [..., H, W, 1] panoptic ids.
    descriptor: DatasetDescriptor.

  Returns:
    semantic: int32, label // divisor.
    panoptic: int32, label with crowd pixels set to ignore_label * divisor.
    thing_mask: bool, pixels of a thing class.
    crowd: bool, thing pixels whose instance id is 0.
  """
  divisor = descriptor.panoptic_label_divisor
  ignore_label = descriptor.ignore_label
  if not 0 <= ignore_label < divisor:
    raise ValueError(f'ignore_label {ignore_label} must be in [0, panoptic_label_divisor '
                     f'{divisor}).')
  semantic = label // divisor
  thing_mask = _is_thing_class(semantic, descriptor)
  crowd = tf.logical_and(thing_mask, tf.equal(label % divisor, 0))
  panoptic = tf.where(crowd, tf.fill(tf.shape(label), ignore_label * divisor), label)
  return semantic, panoptic, thing_mask, crowd


class PanopticSampleGenerator:
  """Builds MaX/kMaX-DeepLab samples from decoded records (see module doc)."""

  def __init__(self,
               descriptor,
               *,
               is_training: bool,
               crop_size: Sequence[int],
               min_resize_value=None,
               max_resize_value=None,
               resize_factor: Optional[int] = None,
               min_scale_factor: float = 1.0,
               max_scale_factor: float = 1.0,
               scale_factor_step_size: float = 0.0,
               autoaugment_policy_name: Optional[str] = None,
               only_semantic_annotations: bool = False,
               thing_id_mask_annotations: bool = False,
               max_thing_id: int = 128,
               sigma: float = 8.0,
               small_instance_threshold: Optional[int] = None,
               small_instance_weight: float = 1.0,
               copy_paste_options=None):
    """Initializes the generator.

    Args:
      descriptor: DatasetDescriptor (num_classes, ignore_label,
        panoptic_label_divisor, class_has_instances_list).
      is_training: random augmentation (True) or deterministic evaluation.
      crop_size: (height, width) of every sample.
      min_resize_value, max_resize_value, resize_factor: resize-to-range spec.
      min_scale_factor, max_scale_factor, scale_factor_step_size: random scale.
      autoaugment_policy_name: optional policy (training only).
      only_semantic_annotations: produce only the semantic targets.
      thing_id_mask_annotations: produce thing_id_mask_gt / thing_id_class_gt.
      max_thing_id: size of thing_id_class_gt (max things per image).
      sigma: std of the centre heatmap Gaussian.
      small_instance_threshold: instances with fewer pixels get
        small_instance_weight in semantic_loss_weight (None: no reweighting).
      small_instance_weight: see small_instance_threshold.
      copy_paste_options: None or an object with panoptic_copy_paste_scale and
        panoptic_copy_paste_{thing,stuff,void}_option (DatasetOptions'
        PanopticCopyPasteOptions); a sample then needs a paste sample.
    """
    if len(crop_size) != 2:
      raise ValueError(f'crop_size must be [height, width], got {list(crop_size)}.')
    self._descriptor = descriptor
    self._is_training = is_training
    self._crop_size = (int(crop_size[0]), int(crop_size[1]))
    self._only_semantic = only_semantic_annotations
    self._thing_id_mask_annotations = thing_id_mask_annotations
    self._max_thing_id = max_thing_id
    self._sigma = sigma
    self._small_instance_threshold = small_instance_threshold or 0
    self._small_instance_weight = small_instance_weight if small_instance_threshold else 1.0
    self._resize_kwargs = dict(min_resize_value=min_resize_value,
                               max_resize_value=max_resize_value, resize_factor=resize_factor,
                               scale_factor_step_size=scale_factor_step_size,
                               autoaugment_policy_name=autoaugment_policy_name)
    self._scale_range = (min_scale_factor, max_scale_factor)
    # Validate the resize spec now rather than at trace time.
    preprocessing.check_max_resize_value(max_resize_value, self._crop_size, is_training)
    if autoaugment_policy_name and autoaugment_policy_name not in autoaugment.POLICIES:
      raise ValueError(f'Unknown autoaugment_policy_name {autoaugment_policy_name!r}; expected '
                       f'one of {sorted(autoaugment.POLICIES)}.')
    if min_scale_factor < 0 or min_scale_factor > max_scale_factor:
      raise ValueError(f'Invalid scale range: min_scale_factor={min_scale_factor}, '
                       f'max_scale_factor={max_scale_factor}.')

    self._copy_paste = None
    if copy_paste_options is not None and copy_paste_options.panoptic_copy_paste_scale > 0:
      for option in (copy_paste_options.panoptic_copy_paste_thing_option,
                     copy_paste_options.panoptic_copy_paste_stuff_option,
                     copy_paste_options.panoptic_copy_paste_void_option):
        if option not in copy_paste.COPY_PASTE_OPTIONS:
          raise ValueError(f'Unknown panoptic copy-paste option {option!r}; expected one of '
                           f'{copy_paste.COPY_PASTE_OPTIONS}.')
      self._copy_paste = copy_paste_options
    kernel, self._kernel_size = gaussian_kernel(sigma)
    self._kernel = tf.constant(kernel.reshape(-1))

  @property
  def uses_copy_paste(self) -> bool:
    return self._copy_paste is not None

  @classmethod
  def from_options(cls, dataset_options, descriptor, *, is_training: bool,
                   only_semantic_annotations: bool = False) -> 'PanopticSampleGenerator':
    """Builds a generator from a DatasetOptions proto, as DeepLab2 does."""
    augmentations = dataset_options.augmentations
    copy_paste_options = None
    if augmentations.HasField('panoptic_copy_paste'):
      copy_paste_options = augmentations.panoptic_copy_paste
    threshold = None
    if dataset_options.increase_small_instance_weights:
      threshold = dataset_options.small_instance_threshold
    return cls(
        descriptor,
        is_training=is_training,
        crop_size=list(dataset_options.crop_size),
        min_resize_value=list(dataset_options.min_resize_value),
        max_resize_value=list(dataset_options.max_resize_value),
        resize_factor=dataset_options.resize_factor or None,
        min_scale_factor=augmentations.min_scale_factor,
        max_scale_factor=augmentations.max_scale_factor,
        scale_factor_step_size=augmentations.scale_factor_step_size,
        autoaugment_policy_name=augmentations.autoaugment_policy_name or None,
        only_semantic_annotations=only_semantic_annotations,
        thing_id_mask_annotations=dataset_options.thing_id_mask_annotations,
        max_thing_id=dataset_options.max_thing_id,
        sigma=dataset_options.sigma,
        small_instance_threshold=threshold,
        small_instance_weight=dataset_options.small_instance_weight,
        copy_paste_options=copy_paste_options)

  def _preprocess(self, image, label, seeds, scale_multiplier=1.0, label_pad_value=None):
    if label_pad_value is None:
      label_pad_value = self._descriptor.ignore_label * self._descriptor.panoptic_label_divisor
    return preprocessing.preprocess_image_and_label(
        image, label, self._crop_size, label_pad_value=label_pad_value,
        is_training=self._is_training,
        min_scale_factor=self._scale_range[0] * scale_multiplier,
        max_scale_factor=self._scale_range[1] * scale_multiplier,
        seeds=seeds, **self._resize_kwargs)

  def __call__(self, decoded: dict, paste_decoded: Optional[dict] = None,
               seed: Optional[tf.Tensor] = None) -> dict:
    """Generates one sample.

    Args:
      decoded: a TFRecordDecoder output (image uint8 [H, W, 3], image_name,
        height, width, and label int32 [H, W, 1] unless labels are not decoded).
      paste_decoded: a second decoded record, required iff copy-paste is on.
      seed: int [2] stateless seed fixing all random choices (training); None
        draws one at random.

    Returns:
      The sample dict described in the module docstring.
    """
    image = decoded[tfrecord_decoder.DECODED_IMAGE]
    label = decoded.get(tfrecord_decoder.DECODED_LABEL)
    image_name = decoded[tfrecord_decoder.DECODED_IMAGE_NAME]
    if label is not None:
      label = tf.cast(label, tf.int32)
      label.shape.assert_is_compatible_with([None, None, 1])
    original_label = label
    seeds = preprocessing.SeedStream(seed) if self._is_training else None

    resized_image, image, label = self._preprocess(image, label, seeds)
    if self._copy_paste is not None and self._is_training:
      if paste_decoded is None:
        raise ValueError('Panoptic copy-paste is enabled, so the generator needs a second '
                         '(paste) sample.')
      divisor = self._descriptor.panoptic_label_divisor
      padding_value = self._descriptor.ignore_label * divisor + 1
      _, paste_image, paste_label = self._preprocess(
          paste_decoded[tfrecord_decoder.DECODED_IMAGE],
          tf.cast(paste_decoded[tfrecord_decoder.DECODED_LABEL], tf.int32), seeds,
          scale_multiplier=self._copy_paste.panoptic_copy_paste_scale,
          label_pad_value=padding_value)
      image, label = copy_paste.panoptic_copy_paste(
          image, label, paste_image, paste_label, descriptor=self._descriptor,
          thing_option=self._copy_paste.panoptic_copy_paste_thing_option,
          stuff_option=self._copy_paste.panoptic_copy_paste_stuff_option,
          void_option=self._copy_paste.panoptic_copy_paste_void_option,
          paste_padding_value=padding_value, seed=seeds.next())

    sample = {common.IMAGE: image}
    if label is not None:
      sample.update(self._targets(label, image_name))

    if not self._is_training:
      sample[common.RESIZED_IMAGE] = resized_image
      sample[common.IMAGE_NAME] = image_name
      sample[common.GT_SIZE_RAW] = tf.stack([
          tf.cast(decoded[tfrecord_decoder.DECODED_HEIGHT], tf.int32),
          tf.cast(decoded[tfrecord_decoder.DECODED_WIDTH], tf.int32)])
      if original_label is not None:
        raw_semantic, _, _, raw_crowd = split_panoptic_label(original_label, self._descriptor)
        sample[common.GT_SEMANTIC_RAW] = raw_semantic[:, :, 0]
        if not self._only_semantic:
          sample[common.GT_PANOPTIC_RAW] = original_label[:, :, 0]
          sample[common.GT_IS_CROWD_RAW] = raw_crowd[:, :, 0]
    return sample

  def _targets(self, label: tf.Tensor, image_name: tf.Tensor) -> dict:
    """Ground-truth maps for a preprocessed int32 [h, w, 1] label."""
    semantic, panoptic, thing_mask, crowd = split_panoptic_label(label, self._descriptor)
    targets = {
        common.GT_SEMANTIC_KEY: semantic[:, :, 0],
        common.SEMANTIC_LOSS_WEIGHT_KEY: tf.ones(tf.shape(semantic)[:2], tf.float32),
        common.GT_IS_CROWD: crowd[:, :, 0],
    }
    if self._only_semantic:
      return targets
    not_crowd = tf.logical_not(crowd)
    non_crowd_things = tf.logical_and(not_crowd, thing_mask)
    targets[common.GT_PANOPTIC_KEY] = label[:, :, 0]
    targets[common.CENTER_LOSS_WEIGHT_KEY] = tf.cast(
        tf.logical_and(not_crowd, tf.not_equal(semantic, self._descriptor.ignore_label)),
        tf.float32)[:, :, 0]
    targets[common.REGRESSION_LOSS_WEIGHT_KEY] = tf.cast(non_crowd_things, tf.float32)[:, :, 0]

    instances = self._instances(panoptic[:, :, 0])
    center, offsets, weights = self._center_offset_and_weights(panoptic[:, :, 0], instances)
    targets[common.GT_INSTANCE_CENTER_KEY] = center
    targets[common.GT_INSTANCE_REGRESSION_KEY] = offsets
    targets[common.SEMANTIC_LOSS_WEIGHT_KEY] = weights
    if self._thing_id_mask_annotations:
      thing_id_mask, thing_id_class = self._thing_ids(instances, image_name)
      targets[common.GT_THING_ID_MASK_KEY] = thing_id_mask
      targets[common.GT_THING_ID_CLASS_KEY] = thing_id_class
    return targets

  def _instances(self, panoptic: tf.Tensor) -> dict:
    """Unique ids in first-appearance (row-major) order and which are instances."""
    divisor = self._descriptor.panoptic_label_divisor
    ids, segment_of_pixel = tf.unique(tf.reshape(panoptic, [-1]))
    is_instance = tf.logical_and(
        tf.not_equal(ids // divisor, self._descriptor.ignore_label),
        tf.not_equal(ids % divisor, 0))
    return {'ids': ids, 'segment_of_pixel': segment_of_pixel, 'is_instance': is_instance,
            'shape': tf.shape(panoptic)}

  def _center_offset_and_weights(self, panoptic: tf.Tensor, instances: dict):
    """Centre heatmap, centre offsets and small-instance semantic weights.

    Returns:
      center: float32 [h, w]; offsets: float32 [h, w, 2] (dy, dx);
      weights: float32 [h, w].
    """
    height, width = instances['shape'][0], instances['shape'][1]
    num_segments = tf.size(instances['ids'])
    segment_of_pixel = instances['segment_of_pixel']
    pixel_index = tf.range(height * width)
    ys = pixel_index // width
    xs = pixel_index % width
    # Exact integer sums, then a float32 mean as DeepLab2's reduce_mean.
    area = tf.math.unsorted_segment_sum(tf.ones_like(ys), segment_of_pixel, num_segments)
    sum_y = tf.math.unsorted_segment_sum(tf.cast(ys, tf.int64), segment_of_pixel, num_segments)
    sum_x = tf.math.unsorted_segment_sum(tf.cast(xs, tf.int64), segment_of_pixel, num_segments)
    area_f = tf.cast(area, tf.float32)
    center_y = tf.cast(tf.round(tf.cast(sum_y, tf.float32) / area_f), tf.int32)
    center_x = tf.cast(tf.round(tf.cast(sum_x, tf.float32) / area_f), tf.int32)

    instance_index = tf.where(instances['is_instance'])[:, 0]
    # Splat one kernel per instance, top-left at its centre in a map padded by
    # the kernel's half size, keeping the maximum where kernels overlap.
    pad_begin = int(round(3 * self._sigma + 1))
    pad_end = int(round(3 * self._sigma + 2))
    size = self._kernel_size
    grid_y, grid_x = tf.meshgrid(tf.range(size), tf.range(size), indexing='ij')
    window = tf.stack([tf.reshape(grid_y, [-1]), tf.reshape(grid_x, [-1])], axis=1)
    corners = tf.stack([tf.gather(center_y, instance_index),
                        tf.gather(center_x, instance_index)], axis=1)
    indices = tf.reshape(corners[:, tf.newaxis, :] + window[tf.newaxis], [-1, 2])
    updates = tf.tile(self._kernel, [tf.size(instance_index)])
    padded = tf.zeros(tf.stack([height + pad_begin + pad_end, width + pad_begin + pad_end]))
    padded = tf.tensor_scatter_nd_max(padded, indices, updates)
    center = padded[pad_begin:pad_begin + height, pad_begin:pad_begin + width]

    pixel_is_instance = tf.gather(instances['is_instance'], segment_of_pixel)
    offset_y = tf.where(pixel_is_instance, tf.gather(center_y, segment_of_pixel) - ys, 0)
    offset_x = tf.where(pixel_is_instance, tf.gather(center_x, segment_of_pixel) - xs, 0)
    offsets = tf.cast(tf.reshape(tf.stack([offset_y, offset_x], axis=1),
                                 tf.stack([height, width, 2])), tf.float32)

    small = tf.logical_and(instances['is_instance'], area < self._small_instance_threshold)
    weights = tf.where(tf.gather(small, segment_of_pixel), self._small_instance_weight, 1.0)
    weights = tf.reshape(tf.cast(weights, tf.float32), tf.stack([height, width]))
    return center, offsets, weights

  def _thing_ids(self, instances: dict, image_name: tf.Tensor):
    """Thing-id mask and classes, ids numbered in first-appearance order.

    Returns:
      thing_id_mask: int32 [h, w], -1 outside thing instances.
      thing_id_class: float32 [max_thing_id], -1 padded.
    """
    divisor = self._descriptor.panoptic_label_divisor
    ids = instances['ids']
    is_instance = instances['is_instance']
    thing_number = tf.cumsum(tf.cast(is_instance, tf.int32)) - 1
    num_things = tf.reduce_sum(tf.cast(is_instance, tf.int32))
    instance_classes = tf.boolean_mask(ids // divisor, is_instance)
    is_thing_class = _is_thing_class(instance_classes, self._descriptor)
    bad_ids = tf.boolean_mask(tf.boolean_mask(ids, is_instance), tf.logical_not(is_thing_class))
    first_bad = tf.concat([bad_ids[:1], [-1]], axis=0)[0]
    checks = [
        tf.debugging.Assert(
            tf.reduce_all(is_thing_class),
            ['Image', image_name, 'has panoptic id', first_bad, 'with a non-zero instance id '
             'but a class that has no instances (stuff); stuff ids must be class * divisor']),
        tf.debugging.Assert(
            num_things <= self._max_thing_id,
            ['Image', image_name, 'has', num_things, 'thing instances in the crop, more than '
             'max_thing_id =', self._max_thing_id]),
    ]
    with tf.control_dependencies(checks):
      pixel_thing = tf.gather(tf.where(is_instance, thing_number, -1),
                              instances['segment_of_pixel'])
      thing_id_class = tf.tensor_scatter_nd_update(
          -tf.ones([self._max_thing_id], tf.float32),
          tf.boolean_mask(thing_number, is_instance)[:, tf.newaxis],
          tf.cast(instance_classes, tf.float32))
    thing_id_mask = tf.reshape(pixel_thing, instances['shape'])
    return thing_id_mask, thing_id_class
