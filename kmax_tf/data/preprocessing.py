"""Resizing, padding, cropping and geometric augmentation of image/label pairs.

Numerically this follows DeepLab2's input preprocessing (resize-to-range with
align-corners bilinear/nearest resizing, padding the image with 127.5 and the
label with the ignore id, random scale, random pad offset, random crop,
horizontal flip), so evaluation inputs are bitwise identical to DeepLab2's.

Randomness uses only stateless ops. Every random decision draws a fresh seed
from a `SeedStream`, so one base seed per sample fixes the whole augmentation.
"""

from typing import Optional, Sequence, Tuple, Union

import tensorflow as tf

from kmax_tf.data import autoaugment

# Value images are padded with (the mean pixel DeepLab2 assumes).
PAD_PIXEL_VALUE = 127.5
FLIP_PROBABILITY = 0.5

SizeSpec = Optional[Union[int, Sequence[int]]]


class SeedStream:
  """Hands out seeds for stateless random ops, all derived from one base seed.

  The n-th call to `next()` returns fold_in(base_seed, n), so the sequence of
  random decisions of a sample is fixed by its base seed.
  """

  def __init__(self, seed: Optional[tf.Tensor] = None):
    """Initializes the stream.

    Args:
      seed: int [2] base seed. None draws a random base seed (stateful op), for
        callers that do not need reproducibility.
    """
    if seed is None:
      seed = tf.random.uniform([2], maxval=tf.int64.max, dtype=tf.int64)
    self._seed = tf.cast(tf.reshape(seed, [2]), tf.int64)
    self._count = 0

  def next(self) -> tf.Tensor:
    """Returns a new int64 [2] seed."""
    self._count += 1
    return tf.random.experimental.stateless_fold_in(self._seed, self._count)


def normalize_size(size: SizeSpec) -> Optional[Tuple[int, int]]:
  """Turns an int / [n] / [h, w] size spec into (h, w); None if unset or 0."""
  if not size:
    return None
  if isinstance(size, int):
    size = (size,)
  size = tuple(int(value) for value in size)
  if len(size) == 1:
    size = (size[0], size[0])
  if len(size) != 2:
    raise ValueError(f'A size must have 1 or 2 values, got {size}.')
  if size[0] <= 0 or size[1] <= 0:
    return None
  return size


def _ratio(target: int, size: tf.Tensor) -> tf.Tensor:
  """float32 target / size, bit-identical to DeepLab2's float64 ratio cast to float32.

  DeepLab2 divides a Python int by an int32 tensor (float64) and applies the
  ratio in float32. Both operands are integers below 2**24, exact in float32,
  and float64 has more than 2 * 24 + 2 significand bits, so rounding the
  float64 quotient to float32 gives the correctly rounded float32 quotient
  (double rounding is innocuous for division; Figueroa, 1995); max/min commute
  with the monotonic cast. Computing in float32 keeps every size unchanged and
  keeps float64 out of the graph (LiteRT has no float64 Maximum/Minimum/RealDiv).
  """
  return tf.constant(float(target), tf.float32) / tf.cast(size, tf.float32)


def _scale_size(size: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """floor(size * factor) evaluated in float32, as DeepLab2 does."""
  return tf.cast(
      tf.floor(tf.cast(size, tf.float32) * tf.cast(factor, tf.float32)), tf.int32)


def resize_to_range_size(height: tf.Tensor,
                         width: tf.Tensor,
                         min_size: SizeSpec = None,
                         max_size: SizeSpec = None,
                         factor: Optional[int] = None) -> tf.Tensor:
  """Output size of resize-to-range, keeping the aspect ratio.

  First scales so both sides reach min_size (which may up- or down-scale), then
  shrinks (never enlarges) so both sides fit max_size. With `factor`, sides are
  rounded up to a multiple of factor plus one (max_size first rounded down to
  such a value).

  Args:
    height: int scalar.
    width: int scalar.
    min_size: optional (h, w) / int minimum size.
    max_size: optional (h, w) / int maximum size.
    factor: optional int.

  Returns:
    int32 [2] (new_height, new_width).
  """
  height = tf.cast(height, tf.int32)
  width = tf.cast(width, tf.int32)
  min_size = normalize_size(min_size)
  max_size = normalize_size(max_size)
  if min_size:
    scale = tf.maximum(_ratio(min_size[0], height), _ratio(min_size[1], width))
    height, width = _scale_size(height, scale), _scale_size(width, scale)
  if max_size:
    if factor:
      max_size = (max_size[0] - (max_size[0] - 1) % factor,
                  max_size[1] - (max_size[1] - 1) % factor)
    scale = tf.minimum(tf.minimum(_ratio(max_size[0], height), _ratio(max_size[1], width)), 1.0)
    height, width = _scale_size(height, scale), _scale_size(width, scale)
  size = tf.stack([height, width])
  if factor:
    size += (factor - (size - 1) % factor) % factor
  return size


def resize_bilinear_align_corners(image: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
  """float32 [H, W, C] -> float32 [h, w, C], align_corners bilinear resize."""
  resized = tf.raw_ops.ResizeBilinear(
      images=tf.expand_dims(tf.cast(image, tf.float32), 0), size=size,
      align_corners=True, half_pixel_centers=False)
  return resized[0]


def resize_nearest_align_corners(label: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
  """[H, W, C] -> [h, w, C] (same dtype), align_corners nearest resize."""
  resized = tf.raw_ops.ResizeNearestNeighbor(
      images=tf.expand_dims(label, 0), size=size, align_corners=True,
      half_pixel_centers=False)
  return resized[0]


def undo_preprocessing(maps: tf.Tensor, resized_size, raw_size) -> tf.Tensor:
  """Predictions on the padded evaluation crop, back on the input image (DeepLab2's undo).

  Crops to the resized image region (top-left), then resizes with
  align-corners nearest neighbour to the raw image size.

  Args:
    maps: int or float [B, crop_h, crop_w] (panoptic, semantic, score maps).
    resized_size: (height, width) of the resized image inside the crop; ints
      or int32 scalars / an int32 [2] tensor.
    raw_size: (height, width) of the input image, same forms.

  Returns:
    [B, raw_h, raw_w] in the dtype of `maps`.
  """
  cropped = maps[:, :resized_size[0], :resized_size[1]]
  size = tf.cast(tf.stack([raw_size[0], raw_size[1]]), tf.int32)
  # expand_dims rather than [..., None]: LiteRT has no builtin new-axis slice.
  restored = tf.raw_ops.ResizeNearestNeighbor(
      images=tf.expand_dims(cropped, -1), size=size, align_corners=True,
      half_pixel_centers=False)
  return restored[..., 0]


def resize_to_range(image: tf.Tensor,
                    label: Optional[tf.Tensor],
                    min_size: SizeSpec = None,
                    max_size: SizeSpec = None,
                    factor: Optional[int] = None):
  """Resizes an image (bilinear) and label (nearest) to `resize_to_range_size`.

  Args:
    image: float32 [H, W, 3].
    label: int32 [H, W, 1] or None.
    min_size, max_size, factor: see resize_to_range_size.

  Returns:
    (float32 [h, w, 3] image, int32 [h, w, 1] label or None).
  """
  shape = tf.shape(image)
  size = resize_to_range_size(shape[0], shape[1], min_size, max_size, factor)
  image = resize_bilinear_align_corners(image, size)
  if label is not None:
    label = resize_nearest_align_corners(label, size)
  return image, label


def pad_image_and_label(image: tf.Tensor,
                        label: Optional[tf.Tensor],
                        offset_height: tf.Tensor,
                        offset_width: tf.Tensor,
                        target_height: tf.Tensor,
                        target_width: tf.Tensor,
                        label_pad_value: int):
  """Pads to the target size, placing the input at the given offset.

  The image is padded with PAD_PIXEL_VALUE (computed as pad-with-zero of the
  mean-subtracted image, exactly as DeepLab2), the label with label_pad_value.

  Args:
    image: float32 [H, W, C].
    label: int32 [H, W, 1] or None.
    offset_height, offset_width: int scalars, rows/columns added before.
    target_height, target_width: int scalars, output size (>= input + offset).
    label_pad_value: int, the label value of padded pixels.

  Returns:
    (float32 [target_height, target_width, C], int32 [target_height,
    target_width, 1] or None).
  """
  shape = tf.shape(image)
  bottom = target_height - offset_height - shape[0]
  right = target_width - offset_width - shape[1]
  check = tf.debugging.Assert(
      tf.logical_and(bottom >= 0, right >= 0),
      ['Padding target', target_height, target_width, 'is smaller than the input',
       shape[0], shape[1], 'plus offset', offset_height, offset_width])
  with tf.control_dependencies([check]):
    paddings = [[offset_height, bottom], [offset_width, right], [0, 0]]
  image = tf.pad(tf.cast(image, tf.float32) - PAD_PIXEL_VALUE, paddings) + PAD_PIXEL_VALUE
  if label is not None:
    label = tf.pad(label, paddings, constant_values=label_pad_value)
  return image, label


def random_scale_factor(min_scale: float, max_scale: float, step_size: float,
                        seed: tf.Tensor) -> tf.Tensor:
  """Draws a scale factor as DeepLab2 defines its distribution.

  Equal min and max give that constant; step_size 0 gives uniform [min, max);
  otherwise one of the int((max - min) / step + 1) evenly spaced values in
  [min, max], each equally likely.

  Returns:
    float32 scalar.
  """
  if min_scale < 0 or min_scale > max_scale:
    raise ValueError(f'Invalid scale range: min_scale_factor={min_scale}, '
                     f'max_scale_factor={max_scale}.')
  if min_scale == max_scale:
    return tf.constant(min_scale, tf.float32)
  if step_size == 0:
    return tf.random.stateless_uniform([], seed, minval=min_scale, maxval=max_scale)
  num_steps = int((max_scale - min_scale) / step_size + 1)
  choices = tf.linspace(float(min_scale), float(max_scale), num_steps)
  index = tf.random.stateless_uniform([], seed, minval=0, maxval=num_steps, dtype=tf.int32)
  return tf.cast(choices[index], tf.float32)


def scale_image_and_label(image: tf.Tensor, label: Optional[tf.Tensor], scale: tf.Tensor):
  """Resizes both by `scale` (size floor(side * scale) in float32)."""
  shape = tf.shape(image)
  new_size = tf.cast(tf.cast(shape[:2], tf.float32) * scale, tf.int32)
  image = resize_bilinear_align_corners(image, new_size)
  if label is not None:
    label = resize_nearest_align_corners(label, new_size)
  return image, label


def _uniform_int(seed: tf.Tensor, maxval: tf.Tensor) -> tf.Tensor:
  """Uniform int32 in [0, maxval)."""
  return tf.random.stateless_uniform([], seed, minval=0, maxval=maxval, dtype=tf.int32)


def check_max_resize_value(max_resize_value: SizeSpec, crop_size: Tuple[int, int],
                           is_training: bool) -> Optional[Tuple[int, int]]:
  """Validates max_resize_value; at evaluation it defaults to the crop size."""
  max_size = normalize_size(max_resize_value)
  if max_size is None and not is_training:
    max_size = tuple(crop_size)
  if max_size is None:
    return None
  if max_size[0] > crop_size[0] or max_size[1] > crop_size[1]:
    raise ValueError(f'max_resize_value {list(max_size)} exceeds crop_size {list(crop_size)}.')
  return max_size


def preprocess_image_and_label(image: tf.Tensor,
                               label: Optional[tf.Tensor],
                               crop_size: Sequence[int],
                               *,
                               label_pad_value: int,
                               is_training: bool,
                               min_resize_value: SizeSpec = None,
                               max_resize_value: SizeSpec = None,
                               resize_factor: Optional[int] = None,
                               min_scale_factor: float = 1.0,
                               max_scale_factor: float = 1.0,
                               scale_factor_step_size: float = 0.0,
                               autoaugment_policy_name: Optional[str] = None,
                               seeds: Optional[SeedStream] = None):
  """Resizes, augments, pads and crops an image/label pair.

  Evaluation: resize to range (max defaults to the crop size), pad bottom/right
  to crop_size. Training: optional resize to range, random scale, optional
  autoaugment, pad to at least crop_size at a random offset, random crop,
  random horizontal flip.

  Args:
    image: uint8 or float32 [H, W, 3].
    label: int [H, W, 1] panoptic ids, or None (evaluation only).
    crop_size: (crop_height, crop_width).
    label_pad_value: label value of padded pixels (ignore_label * divisor).
    is_training: training augmentation or evaluation.
    min_resize_value, max_resize_value, resize_factor: resize-to-range spec.
    min_scale_factor, max_scale_factor, scale_factor_step_size: random scale.
    autoaugment_policy_name: optional autoaugment policy (see autoaugment).
    seeds: SeedStream of the sample (training); None draws a random one.

  Returns:
    resized_image: float32 [h, w, 3], the image after resize-to-range only.
    image: float32 [crop_height, crop_width, 3].
    label: int32 [crop_height, crop_width, 1], or None.
  """
  crop_height, crop_width = int(crop_size[0]), int(crop_size[1])
  if is_training and label is None:
    raise ValueError('Training preprocessing needs a label.')
  image = tf.cast(image, tf.float32)
  image.shape.assert_is_compatible_with([None, None, 3])
  if label is not None:
    label = tf.cast(label, tf.int32)
    label.shape.assert_is_compatible_with([None, None, 1])

  resized_image = image
  if normalize_size(min_resize_value) or normalize_size(max_resize_value) or not is_training:
    max_size = check_max_resize_value(max_resize_value, (crop_height, crop_width), is_training)
    image, label = resize_to_range(image, label, min_resize_value, max_size, resize_factor)
    resized_image = image

  if not is_training:
    image, label = pad_image_and_label(image, label, 0, 0, crop_height, crop_width,
                                       label_pad_value)
    image.set_shape([crop_height, crop_width, 3])
    if label is not None:
      label.set_shape([crop_height, crop_width, 1])
    return resized_image, image, label

  if seeds is None:
    seeds = SeedStream()
  scale_seed = seeds.next()
  if not min_scale_factor == max_scale_factor == 1.0:
    scale = random_scale_factor(min_scale_factor, max_scale_factor, scale_factor_step_size,
                                scale_seed)
    image, label = scale_image_and_label(image, label, scale)

  # Drawn even without a policy so the geometry of a seed does not depend on it.
  autoaugment_seed = seeds.next()
  if autoaugment_policy_name:
    # DeepLab2 runs autoaugment on the truncated uint8 image.
    image = autoaugment.distort_image(tf.cast(image, tf.uint8), autoaugment_policy_name,
                                      autoaugment_seed)
    image = tf.cast(image, tf.float32)

  # Pad to at least the crop size, at a random offset when smaller.
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  target_height = tf.maximum(height, crop_height)
  target_width = tf.maximum(width, crop_width)
  pad_top = _uniform_int(seeds.next(), tf.maximum(crop_height - height, 1))
  pad_left = _uniform_int(seeds.next(), tf.maximum(crop_width - width, 1))
  image, label = pad_image_and_label(image, label, pad_top, pad_left, target_height,
                                     target_width, label_pad_value)

  crop_top = _uniform_int(seeds.next(), target_height - crop_height + 1)
  crop_left = _uniform_int(seeds.next(), target_width - crop_width + 1)
  image = tf.slice(image, tf.stack([crop_top, crop_left, 0]), [crop_height, crop_width, 3])
  label = tf.slice(label, tf.stack([crop_top, crop_left, 0]), [crop_height, crop_width, 1])

  flip = tf.random.stateless_uniform([], seeds.next()) <= FLIP_PROBABILITY
  image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
  label = tf.cond(flip, lambda: tf.reverse(label, [1]), lambda: label)
  image.set_shape([crop_height, crop_width, 3])
  label.set_shape([crop_height, crop_width, 1])
  return resized_image, image, label
