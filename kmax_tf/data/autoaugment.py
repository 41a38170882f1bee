"""AutoAugment colour policies used by kMaX-DeepLab training.

The policies are DeepLab2's `simple_classification_policy` and its
`simple_classification_policy_magnitude_scale_0.2` variant: five sub-policies
of two photometric operations each, written as (operation index, probability
index, magnitude) triples over a reduced operation space. One sub-policy is
picked uniformly per image; each of its operations is applied with its
probability. All operations are photometric, so labels are never touched.

The operations are TF versions of PIL's ImageOps/ImageEnhance functions with
DeepLab2's numerics (uint8 truncation, its contrast "mean", its equalize LUT).
Randomness is stateless: `distort_image` takes an explicit seed.
"""

from typing import Callable, Dict, List, Sequence, Tuple

import tensorflow as tf

# Operation space the policy integers index into.
REDUCED_OPERATIONS = ('AutoContrast', 'Equalize', 'Invert', 'Posterize', 'Solarize', 'Color',
                      'Contrast', 'Brightness', 'Sharpness')
# Probability values the policy's probability indices refer to.
PROBABILITY_LEVELS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
MAX_LEVEL = 10.0

# Five sub-policies x two operations x (operation, probability index, magnitude).
SIMPLE_CLASSIFICATION_POLICY = (
    (8, 2, 7), (7, 1, 10),
    (1, 0, 9), (6, 1, 10),
    (8, 1, 9), (5, 1, 9),
    (4, 1, 7), (1, 3, 9),
    (8, 1, 1), (1, 1, 7),
)

Operation = Tuple[str, float, float]  # (name, probability, magnitude level)


def decode_policy(triples: Sequence[Tuple[int, int, int]],
                  magnitude_scale: float = 1.0) -> List[List[Operation]]:
  """Turns (op, prob index, magnitude) triples into sub-policies of 2 ops."""
  if len(triples) % 2:
    raise ValueError('A policy needs an even number of operations (2 per sub-policy).')
  operations = [(REDUCED_OPERATIONS[op], PROBABILITY_LEVELS[prob], magnitude * magnitude_scale)
                for op, prob, magnitude in triples]
  return [operations[i:i + 2] for i in range(0, len(operations), 2)]


POLICIES: Dict[str, List[List[Operation]]] = {
    'simple_classification_policy': decode_policy(SIMPLE_CLASSIFICATION_POLICY, 1),
    'simple_classification_policy_magnitude_scale_0.2': decode_policy(
        SIMPLE_CLASSIFICATION_POLICY, magnitude_scale=0.2),
}


# ---- Operations on uint8 [H, W, 3] images. ----

def blend(image1: tf.Tensor, image2: tf.Tensor, factor: float) -> tf.Tensor:
  """image1 + factor * (image2 - image1), truncated to uint8 (clipped if extrapolating)."""
  if factor == 0.0:
    return tf.convert_to_tensor(image1)
  if factor == 1.0:
    return tf.convert_to_tensor(image2)
  start = tf.cast(image1, tf.float32)
  mixed = start + factor * (tf.cast(image2, tf.float32) - start)
  if 0.0 < factor < 1.0:
    return tf.cast(mixed, tf.uint8)
  return tf.cast(tf.clip_by_value(mixed, 0.0, 255.0), tf.uint8)


def autocontrast(image: tf.Tensor) -> tf.Tensor:
  """Stretches each channel so its min maps to 0 and max to 255."""
  def stretch(channel):
    low = tf.cast(tf.reduce_min(channel), tf.float32)
    high = tf.cast(tf.reduce_max(channel), tf.float32)

    def rescale():
      scale = 255.0 / (high - low)
      values = tf.cast(channel, tf.float32) * scale - low * scale
      return tf.cast(tf.clip_by_value(values, 0.0, 255.0), tf.uint8)

    return tf.cond(high > low, rescale, lambda: channel)

  return tf.stack([stretch(image[:, :, c]) for c in range(3)], axis=2)


def equalize(image: tf.Tensor) -> tf.Tensor:
  """Histogram equalization per channel (PIL's lookup-table rule)."""
  def equalize_channel(channel):
    values = tf.cast(channel, tf.int32)
    histogram = tf.histogram_fixed_width(values, [0, 255], nbins=256)
    used_bins = tf.gather(histogram, tf.where(histogram > 0)[:, 0])
    step = (tf.reduce_sum(used_bins) - used_bins[-1]) // 255

    def apply_lut():
      lut = (tf.cumsum(histogram) + step // 2) // step
      lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], axis=0), 0, 255)
      return tf.gather(lut, values)

    return tf.cast(tf.cond(tf.equal(step, 0), lambda: values, apply_lut), tf.uint8)

  return tf.stack([equalize_channel(image[:, :, c]) for c in range(3)], axis=2)


def invert(image: tf.Tensor) -> tf.Tensor:
  return 255 - image


def posterize(image: tf.Tensor, bits: int) -> tf.Tensor:
  """Keeps the `bits` most significant bits of every value."""
  shift = 8 - bits
  return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def solarize(image: tf.Tensor, threshold: int = 128) -> tf.Tensor:
  """Inverts values at or above the threshold."""
  return tf.where(image < threshold, image, 255 - image)


def _grey_to_rgb(grey: tf.Tensor) -> tf.Tensor:
  """[H, W, 1] -> [H, W, 3]. tf.image.grayscale_to_rgb would add shape Asserts,
  stateful ops that make the input pipeline's iterator unserializable."""
  return tf.tile(grey, [1, 1, 3])


def color(image: tf.Tensor, factor: float) -> tf.Tensor:
  """Saturation: blends with the greyscale image."""
  grey = _grey_to_rgb(tf.image.rgb_to_grayscale(image))
  return blend(grey, image, factor)


def contrast(image: tf.Tensor, factor: float) -> tf.Tensor:
  """Contrast: blends with a constant image.

  As in DeepLab2 (and the TPU AutoAugment it derives from), the constant is the
  pixel count divided by 256 (the sum of a 256-bin histogram over 256), not the
  mean grey level.
  """
  grey = tf.cast(tf.image.rgb_to_grayscale(image), tf.int32)
  histogram = tf.histogram_fixed_width(grey, [0, 255], nbins=256)
  constant = tf.reduce_sum(tf.cast(histogram, tf.float32)) / 256.0
  flat = tf.clip_by_value(tf.ones_like(grey, dtype=tf.float32) * constant, 0.0, 255.0)
  return blend(_grey_to_rgb(tf.cast(flat, tf.uint8)), image, factor)


def brightness(image: tf.Tensor, factor: float) -> tf.Tensor:
  return blend(tf.zeros_like(image), image, factor)


def sharpness(image: tf.Tensor, factor: float) -> tf.Tensor:
  """Blends with PIL's SMOOTH-filtered image (borders keep the original)."""
  kernel = tf.constant([[1., 1., 1.], [1., 5., 1.], [1., 1., 1.]]) / 13.0
  kernel = tf.tile(tf.reshape(kernel, [3, 3, 1, 1]), [1, 1, 3, 1])
  smooth = tf.nn.depthwise_conv2d(tf.cast(image, tf.float32)[tf.newaxis], kernel,
                                  strides=[1, 1, 1, 1], padding='VALID')
  smooth = tf.cast(tf.clip_by_value(smooth[0], 0.0, 255.0), tf.uint8)
  interior = tf.pad(tf.ones_like(smooth), [[1, 1], [1, 1], [0, 0]])
  smooth = tf.where(tf.equal(interior, 1), tf.pad(smooth, [[1, 1], [1, 1], [0, 0]]), image)
  return blend(smooth, image, factor)


def _enhance_factor(level: float) -> float:
  return (level / MAX_LEVEL) * 1.8 + 0.1


def make_operation(name: str, level: float) -> Callable[[tf.Tensor], tf.Tensor]:
  """Binds an operation to the argument its magnitude level maps to."""
  if name == 'AutoContrast':
    return autocontrast
  if name == 'Equalize':
    return equalize
  if name == 'Invert':
    return invert
  if name == 'Posterize':
    bits = int((level / MAX_LEVEL) * 4)
    return lambda image: posterize(image, bits)
  if name == 'Solarize':
    threshold = int((level / MAX_LEVEL) * 256)
    return lambda image: solarize(image, threshold)
  enhancers = {'Color': color, 'Contrast': contrast, 'Brightness': brightness,
               'Sharpness': sharpness}
  if name in enhancers:
    factor = _enhance_factor(level)
    enhancer = enhancers[name]
    return lambda image: enhancer(image, factor)
  raise ValueError(f'Unknown autoaugment operation {name!r}.')


def distort_image(image: tf.Tensor, policy_name: str, seed: tf.Tensor) -> tf.Tensor:
  """Applies a random sub-policy of `policy_name` to an image.

  Args:
    image: uint8 [H, W, 3].
    policy_name: a key of POLICIES.
    seed: int [2] stateless seed; the same seed gives the same result.

  Returns:
    uint8 [H, W, 3].
  """
  if policy_name not in POLICIES:
    raise ValueError(f'Unknown autoaugment_policy_name {policy_name!r}; expected one of '
                     f'{sorted(POLICIES)}.')
  image = tf.convert_to_tensor(image)
  if image.dtype != tf.uint8:
    raise ValueError(f'autoaugment expects a uint8 image, got {image.dtype.name}.')
  sub_policies = POLICIES[policy_name]
  seed = tf.cast(tf.reshape(seed, [2]), tf.int64)
  chosen = tf.random.stateless_uniform(
      [], tf.random.experimental.stateless_fold_in(seed, 0), minval=0,
      maxval=len(sub_policies), dtype=tf.int32)
  draws = tf.random.stateless_uniform(
      [2], tf.random.experimental.stateless_fold_in(seed, 1))

  def run_sub_policy(operations):
    def apply(img):
      for position, (name, probability, level) in enumerate(operations):
        operation = make_operation(name, level)
        # Applied with probability `probability`.
        img = tf.cond(draws[position] < probability, lambda op=operation, x=img: op(x),
                      lambda x=img: x)
      return img
    return apply

  branches = [run_sub_policy(operations) for operations in sub_policies]
  return tf.switch_case(chosen, [lambda b=b: b(image) for b in branches])
