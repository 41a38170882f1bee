"""Byte encodings of panoptic label maps stored in TFRecords.

A panoptic label map holds one id per pixel, `semantic * label_divisor +
instance`. Two encodings are supported, named by the record's
`image/segmentation/class/format` feature:

* `raw` (DeepLab2's format): the ids as little-endian int32, row-major, with
  the map's height and width taken from `image/height` and `image/width`.
* `panoptic_png`: an RGB PNG where id = R + 256 * G + 65536 * B, the same
  convention as COCO panoptic PNGs (`kmax_tf.panoptic_rgb`). Much smaller than
  `raw` on disk; ids must be in [0, 2**24).

Writers (the dataset converters) use the numpy functions, readers (the tf.data
decoder) use `decode_label_tf`, which accepts both formats transparently.
"""

import io

import numpy as np
import tensorflow as tf
from PIL import Image

from kmax_tf import panoptic_rgb

LABEL_FORMAT_RAW = 'raw'
LABEL_FORMAT_PANOPTIC_PNG = 'panoptic_png'
SUPPORTED_LABEL_FORMATS = (LABEL_FORMAT_RAW, LABEL_FORMAT_PANOPTIC_PNG)


def _check_panoptic_map(panoptic: np.ndarray) -> np.ndarray:
  panoptic = panoptic_rgb.as_id_map(panoptic, 'panoptic map')
  if panoptic.size and panoptic.min() < 0:
    raise ValueError(f'Panoptic ids must be >= 0, got minimum {panoptic.min()}.')
  return panoptic


def encode_raw(panoptic: np.ndarray) -> bytes:
  """Encodes ids as DeepLab2's `raw` label: little-endian int32 bytes.

  Args:
    panoptic: integer [H, W] (or [H, W, 1]) panoptic ids.

  Returns:
    H * W * 4 bytes.
  """
  panoptic = _check_panoptic_map(panoptic)
  if panoptic.size and panoptic.max() > np.iinfo(np.int32).max:
    raise ValueError(f'Panoptic id {panoptic.max()} does not fit in int32.')
  return np.ascontiguousarray(panoptic, dtype='<i4').tobytes()


def decode_raw(data: bytes, height: int, width: int) -> np.ndarray:
  """Decodes a `raw` label into int32 [height, width] ids."""
  expected = height * width * 4
  if len(data) != expected:
    raise ValueError(f'Raw label has {len(data)} bytes, expected {expected} for a '
                     f'{height}x{width} int32 map.')
  return np.frombuffer(data, dtype='<i4').reshape(height, width).astype(np.int32)


def encode_panoptic_png(panoptic: np.ndarray) -> bytes:
  """Encodes ids as an RGB PNG (`panoptic_png` format)."""
  return panoptic_rgb.encode_png(_check_panoptic_map(panoptic))


def decode_panoptic_png(data: bytes) -> np.ndarray:
  """Decodes a `panoptic_png` label into int32 [H, W] ids."""
  with Image.open(io.BytesIO(data)) as image:
    if image.mode != 'RGB':
      raise ValueError(f'A panoptic PNG must be RGB, got mode {image.mode}.')
    return panoptic_rgb.rgb_to_ids(np.asarray(image), np.int32)


def encode_label(panoptic: np.ndarray, label_format: str) -> bytes:
  """Encodes int [H, W] panoptic ids in `label_format` ('raw' or 'panoptic_png')."""
  if label_format == LABEL_FORMAT_RAW:
    return encode_raw(panoptic)
  if label_format == LABEL_FORMAT_PANOPTIC_PNG:
    return encode_panoptic_png(panoptic)
  raise ValueError(f'Unknown label format {label_format!r}; expected one of '
                   f'{SUPPORTED_LABEL_FORMATS}.')


def decode_label(data: bytes, label_format: str, height: int, width: int) -> np.ndarray:
  """Decodes label bytes of either format into int32 [height, width] ids."""
  if label_format == LABEL_FORMAT_RAW:
    return decode_raw(data, height, width)
  if label_format == LABEL_FORMAT_PANOPTIC_PNG:
    panoptic = decode_panoptic_png(data)
    if panoptic.shape != (height, width):
      raise ValueError(f'Panoptic PNG is {panoptic.shape[0]}x{panoptic.shape[1]}, expected '
                       f'{height}x{width}.')
    return panoptic
  raise ValueError(f'Unknown label format {label_format!r}; expected one of '
                   f'{SUPPORTED_LABEL_FORMATS}.')


def decode_label_tf(encoded: tf.Tensor, label_format: tf.Tensor, height: tf.Tensor,
                    width: tf.Tensor, context: tf.Tensor = None) -> tf.Tensor:
  """Decodes a label of either format inside a tf.data pipeline.

  Args:
    encoded: string scalar, the label bytes.
    label_format: string scalar, 'raw' or 'panoptic_png'.
    height: int scalar, image height (the label must match it).
    width: int scalar, image width.
    context: optional string scalar naming the record in error messages.

  Returns:
    int32 [height, width, 1] panoptic ids.

  Raises:
    tf.errors.InvalidArgumentError (when run) for an unknown format or a label
    whose size differs from the image's, with `context` in the message.
  """
  if context is None:
    context = tf.constant('<unknown record>')
  height = tf.cast(height, tf.int32)
  width = tf.cast(width, tf.int32)
  is_raw = tf.equal(label_format, LABEL_FORMAT_RAW)
  is_png = tf.equal(label_format, LABEL_FORMAT_PANOPTIC_PNG)
  format_check = tf.debugging.Assert(
      tf.logical_or(is_raw, is_png),
      ['Unknown label format', label_format, 'in record', context,
       f'(expected one of {SUPPORTED_LABEL_FORMATS})'])

  def decode_raw_branch():
    num_bytes = tf.strings.length(encoded)
    size_check = tf.debugging.Assert(
        tf.equal(num_bytes, height * width * 4),
        ['Raw label of record', context, 'has', num_bytes, 'bytes but the image is', height,
         'x', width, '(4 bytes per int32 id expected)'])
    with tf.control_dependencies([size_check]):
      flat = tf.io.decode_raw(encoded, out_type=tf.int32, little_endian=True)
      return tf.reshape(flat, tf.stack([height, width, 1]))

  def decode_png_branch():
    signature_check = tf.debugging.Assert(
        tf.equal(tf.strings.substr(encoded, 0, 8), b'\x89PNG\r\n\x1a\n'),
        ['panoptic_png label of record', context, 'is not a PNG'])
    with tf.control_dependencies([signature_check]):
      rgb = tf.cast(tf.io.decode_png(encoded, channels=3, dtype=tf.uint8), tf.int32)
    shape = tf.shape(rgb)
    size_check = tf.debugging.Assert(
        tf.logical_and(tf.equal(shape[0], height), tf.equal(shape[1], width)),
        ['Panoptic PNG label of record', context, 'is', shape[0], 'x', shape[1],
         'but the image is', height, 'x', width])
    with tf.control_dependencies([size_check]):
      ids = rgb[:, :, 0] + 256 * rgb[:, :, 1] + 65536 * rgb[:, :, 2]
      return tf.expand_dims(ids, -1)

  with tf.control_dependencies([format_check]):
    label = tf.cond(is_raw, decode_raw_branch, decode_png_branch)
  label.set_shape([None, None, 1])
  return label
