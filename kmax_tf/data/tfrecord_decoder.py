"""DeepLab2-compatible tf.Example records: writing helper and tf.data decoder.

A record holds the features named in kmax_tf.common (DeepLab2's names):
`image/encoded` (JPEG or PNG bytes), `image/filename`, `image/format`,
`image/height`, `image/width`, `image/channels` and, when ground truth is
present, `image/segmentation/class/encoded` with
`image/segmentation/class/format` ('raw' as DeepLab2 writes, or our compact
'panoptic_png'; see label_codec).

The decoder checks every record and fails with a message naming the record
(TFRecord shard and image/filename) rather than skipping it or failing deep in
an op: missing or undecodable image, image size different from the declared
size or from the label size, unknown label format, panoptic ids whose class is
not in the dataset.
"""

import os
import tempfile
from typing import Iterable, Optional

import numpy as np
import tensorflow as tf

from kmax_tf import common
from kmax_tf.data import label_codec

# Keys of the decoded record dict.
DECODED_IMAGE = 'image'
DECODED_IMAGE_NAME = 'image_name'
DECODED_HEIGHT = 'height'
DECODED_WIDTH = 'width'
DECODED_LABEL = 'label'

_SUPPORTED_IMAGE_FORMATS = ('jpeg', 'jpg', 'png')
# Bytes inspected at the end of an encoded image to detect truncation.
_TRAILER_WINDOW = 64


def _bytes_feature(value) -> tf.train.Feature:
  if isinstance(value, str):
    value = value.encode()
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64_feature(value: int) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def example_from_encoded(image_data: bytes, image_format: str, filename: str, height: int,
                         width: int, label_data: Optional[bytes] = None,
                         label_format: Optional[str] = None) -> tf.train.Example:
  """Builds a DeepLab2-format tf.Example from already encoded image and label.

  This is the one place that writes DeepLab2's feature keys.

  Args:
    image_data: encoded RGB image bytes (JPEG or PNG), stored unchanged.
    image_format: 'jpeg', 'jpg' or 'png'.
    filename: image name without directory/extension (DeepLab2 uses the stem).
    height: image height in pixels.
    width: image width in pixels.
    label_data: encoded panoptic label (see label_codec), or None if unlabeled.
    label_format: its format, 'raw' (DeepLab2) or 'panoptic_png'.

  Returns:
    The tf.train.Example.
  """
  if image_format not in _SUPPORTED_IMAGE_FORMATS:
    raise ValueError(f'{filename}: unsupported image format {image_format!r}; expected one of '
                     f'{_SUPPORTED_IMAGE_FORMATS}.')
  features = {
      common.KEY_ENCODED_IMAGE: _bytes_feature(image_data),
      common.KEY_IMAGE_FILENAME: _bytes_feature(filename),
      common.KEY_IMAGE_FORMAT: _bytes_feature(image_format),
      common.KEY_IMAGE_HEIGHT: _int64_feature(height),
      common.KEY_IMAGE_WIDTH: _int64_feature(width),
      common.KEY_IMAGE_CHANNELS: _int64_feature(3),
  }
  if label_data is not None:
    if label_format not in label_codec.SUPPORTED_LABEL_FORMATS:
      raise ValueError(f'{filename}: unsupported label format {label_format!r}; expected one of '
                       f'{label_codec.SUPPORTED_LABEL_FORMATS}.')
    features[common.KEY_ENCODED_LABEL] = _bytes_feature(label_data)
    features[common.KEY_LABEL_FORMAT] = _bytes_feature(label_format)
  return tf.train.Example(features=tf.train.Features(feature=features))


def make_tf_example(image_data: bytes,
                    image_format: str,
                    filename: str,
                    height: int,
                    width: int,
                    panoptic: Optional[np.ndarray] = None,
                    label_format: str = label_codec.LABEL_FORMAT_RAW) -> tf.train.Example:
  """Builds a DeepLab2-format tf.Example, encoding the panoptic label.

  Args:
    image_data, image_format, filename, height, width: see `example_from_encoded`.
    panoptic: optional integer [height, width] ids, semantic * divisor + instance.
    label_format: 'raw' (DeepLab2) or 'panoptic_png'.

  Returns:
    The tf.train.Example.
  """
  label_data = None
  if panoptic is not None:
    panoptic = np.asarray(panoptic)
    if panoptic.shape[:2] != (height, width):
      raise ValueError(f'{filename}: label is {panoptic.shape[0]}x{panoptic.shape[1]} but the '
                       f'image is {height}x{width}.')
    label_data = label_codec.encode_label(panoptic, label_format)
  return example_from_encoded(image_data, image_format, filename, height, width, label_data,
                              label_format)


def write_tfrecord(path: str, examples: Iterable[tf.train.Example],
                   overwrite: bool = False) -> int:
  """Writes examples to a TFRecord file atomically (temp file + rename).

  Returns:
    The number of records written.

  Raises:
    FileExistsError: `path` exists and overwrite is False.
  """
  path = os.fspath(path)
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f'{path} exists; pass overwrite=True to replace it.')
  directory = os.path.dirname(os.path.abspath(path))
  handle, temp_path = tempfile.mkstemp(dir=directory, prefix='.tmp-', suffix='.tfrecord')
  os.close(handle)
  count = 0
  try:
    with tf.io.TFRecordWriter(temp_path) as writer:
      for example in examples:
        writer.write(example.SerializeToString())
        count += 1
    os.replace(temp_path, path)
  except BaseException:
    if os.path.exists(temp_path):
      os.remove(temp_path)
    raise
  return count


def _ends_with_marker(encoded: tf.Tensor, marker: bytes) -> tf.Tensor:
  """True if `marker` occurs in the last _TRAILER_WINDOW bytes of `encoded`."""
  length = tf.strings.length(encoded)
  start = tf.maximum(length - _TRAILER_WINDOW, 0)
  tail = tf.io.decode_raw(tf.strings.substr(encoded, start, length - start), tf.uint8)
  num_windows = tf.size(tail) - len(marker) + 1
  found = tf.ones([tf.maximum(num_windows, 0)], tf.bool)
  for offset, byte in enumerate(marker):
    found = tf.logical_and(found, tf.equal(tail[offset:offset + tf.maximum(num_windows, 0)], byte))
  return tf.reduce_any(found)


def _looks_like_complete_image(encoded: tf.Tensor) -> tf.Tensor:
  """Cheap header/trailer check so bad images fail with a named record."""
  head = tf.strings.substr(encoded, 0, 8)
  is_jpeg = tf.equal(tf.strings.substr(head, 0, 3), b'\xff\xd8\xff')
  is_png = tf.equal(head, b'\x89PNG\r\n\x1a\n')
  return tf.logical_or(
      tf.logical_and(is_jpeg, _ends_with_marker(encoded, b'\xff\xd9')),
      tf.logical_and(is_png, _ends_with_marker(encoded, b'IEND')))


class TFRecordDecoder:
  """Parses serialized DeepLab2 tf.Examples into image/label tensors.

  Calling the decoder on a serialized record returns a dict:
    image: uint8 [H, W, 3], RGB as decoded by tf.io.decode_image.
    image_name: string scalar (`image/filename`).
    height, width: int32 scalars.
    label: int32 [H, W, 1] panoptic ids (only if decode_groundtruth_label).
  """

  def __init__(self, descriptor=None, decode_groundtruth_label: bool = True):
    """Initializes the decoder.

    Args:
      descriptor: optional DatasetDescriptor; when given, every label is checked
        to hold only classes in [0, num_classes) or the ignore label.
      decode_groundtruth_label: whether records carry and should yield labels.
    """
    self._descriptor = descriptor
    self._decode_groundtruth_label = decode_groundtruth_label
    string_feature = tf.io.FixedLenFeature((), tf.string, default_value='')
    int_feature = tf.io.FixedLenFeature((), tf.int64, default_value=-1)
    self._features = {
        common.KEY_ENCODED_IMAGE: string_feature,
        common.KEY_IMAGE_FILENAME: string_feature,
        common.KEY_IMAGE_FORMAT: string_feature,
        common.KEY_IMAGE_HEIGHT: int_feature,
        common.KEY_IMAGE_WIDTH: int_feature,
        common.KEY_IMAGE_CHANNELS: tf.io.FixedLenFeature((), tf.int64, default_value=3),
    }
    if decode_groundtruth_label:
      self._features[common.KEY_ENCODED_LABEL] = string_feature
      self._features[common.KEY_LABEL_FORMAT] = tf.io.FixedLenFeature(
          (), tf.string, default_value=label_codec.LABEL_FORMAT_RAW)

  def __call__(self, serialized: tf.Tensor, source: Optional[tf.Tensor] = None) -> dict:
    """Decodes one record.

    Args:
      serialized: string scalar, a serialized tf.Example.
      source: optional string scalar naming where the record came from (the
        TFRecord path); it is included in error messages.

    Returns:
      The decoded dict described in the class docstring.
    """
    parsed = tf.io.parse_single_example(serialized, self._features)
    image_name = parsed[common.KEY_IMAGE_FILENAME]
    context = tf.strings.join(['image/filename="', image_name, '"'])
    if source is not None:
      context = tf.strings.join([context, ' in ', source])
    height = tf.cast(parsed[common.KEY_IMAGE_HEIGHT], tf.int32)
    width = tf.cast(parsed[common.KEY_IMAGE_WIDTH], tf.int32)

    encoded_image = parsed[common.KEY_ENCODED_IMAGE]
    checks = [
        tf.debugging.Assert(
            tf.strings.length(encoded_image) > 0,
            ['Missing or empty image/encoded in record', context]),
        tf.debugging.Assert(
            _looks_like_complete_image(encoded_image),
            ['Unreadable image (not a complete JPEG/PNG) in record', context]),
        tf.debugging.Assert(
            tf.logical_and(height > 0, width > 0),
            ['Missing or invalid image/height, image/width in record', context, height, width]),
    ]
    with tf.control_dependencies(checks):
      image = tf.io.decode_image(encoded_image, channels=3, dtype=tf.uint8,
                                 expand_animations=False)
    image.set_shape([None, None, 3])
    image_shape = tf.shape(image)
    size_check = tf.debugging.Assert(
        tf.logical_and(tf.equal(image_shape[0], height), tf.equal(image_shape[1], width)),
        ['Decoded image of record', context, 'is', image_shape[0], 'x', image_shape[1],
         'but image/height, image/width say', height, 'x', width])
    with tf.control_dependencies([size_check]):
      image = tf.identity(image)

    decoded = {
        DECODED_IMAGE: image,
        DECODED_IMAGE_NAME: image_name,
        DECODED_HEIGHT: height,
        DECODED_WIDTH: width,
    }
    if self._decode_groundtruth_label:
      encoded_label = parsed[common.KEY_ENCODED_LABEL]
      label_present = tf.debugging.Assert(
          tf.strings.length(encoded_label) > 0,
          ['Missing or empty image/segmentation/class/encoded in record', context])
      with tf.control_dependencies([label_present]):
        label = label_codec.decode_label_tf(
            encoded_label, parsed[common.KEY_LABEL_FORMAT], height, width, context)
      if self._descriptor is not None:
        label = self._check_label_classes(label, context)
      decoded[DECODED_LABEL] = label
    return decoded

  def _check_label_classes(self, label: tf.Tensor, context: tf.Tensor) -> tf.Tensor:
    """Asserts every id decodes to a known class (or the ignore label)."""
    divisor = self._descriptor.panoptic_label_divisor
    semantic = label // divisor
    known = tf.logical_or(semantic < self._descriptor.num_classes,
                          tf.equal(semantic, self._descriptor.ignore_label))
    known = tf.logical_and(known, label >= 0)
    bad_ids = tf.boolean_mask(tf.reshape(label, [-1]), tf.logical_not(tf.reshape(known, [-1])))
    first_bad = tf.concat([bad_ids[:1], [-1]], axis=0)[0]
    check = tf.debugging.Assert(
        tf.reduce_all(known),
        ['Panoptic id', first_bad, 'of record', context, 'has a class outside [0,',
         self._descriptor.num_classes, ') and is not the ignore label',
         self._descriptor.ignore_label, '(label divisor', divisor, ')'])
    with tf.control_dependencies([check]):
      return tf.identity(label)
