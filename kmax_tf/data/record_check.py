"""Cheap start-of-run checks of the TFRecord inputs, and one-line data errors.

`check_input_files` runs before the model is built: every file a needed
`file_pattern` matches must be readable, its TFRecord framing must add up to
the file size (local files: only the 12-byte record headers are read), and its
first record must decode as a DeepLab2 example (image, size, label and its
classes). A corruption that only shows later, while training reads the data,
ends the input pipeline with an error naming the file and byte offset
(`kmax_tf.data.input_pipeline`); `data_error_line` turns that error into one
line for the command line.
"""

import re
import struct
from typing import List, Optional, Sequence

import tensorflow as tf

from kmax_tf.config import validation
from kmax_tf.data import input_pipeline

# TFRecord framing: uint64 length, uint32 masked CRC of the length, the data,
# uint32 masked CRC of the data.
_HEADER_BYTES = 12
_FOOTER_BYTES = 4


# The input pipeline's assertion (input_pipeline._read_checked_tfrecord) and the
# decoder's record checks (tfrecord_decoder.TFRecordDecoder).
_PIPELINE_ERROR = re.compile(r'TFRecord file\]?\s*\[?(?P<path>[^\]\n]+?)\]?\s*\[?is corrupt or '
                             r'truncated.*?byte offset\]?\s*\[?(?P<offset>\d+)', re.S)
_DECODER_ERROR = re.compile(r'\[(?P<what>(Unreadable image|Missing or|Decoded image|Panoptic id)'
                            r'[^\n]*)')


class DataError(ValueError):
  """An input file that cannot be used; the message names the file."""


def is_remote(path: str) -> bool:
  """True for paths of a non-local TensorFlow file system (gs://, ram://, ...)."""
  return '://' in path and not path.startswith('file://')


def matched_files(file_patterns: Sequence[str], field: str) -> List[str]:
  """Sorted unique files of `file_patterns`; DataError naming a pattern matching nothing."""
  try:
    return input_pipeline.resolve_file_patterns(file_patterns)
  except ValueError as error:  # "file_pattern ... matches no file." or an empty list.
    raise DataError(f'{field}.{str(error).removeprefix("dataset_options.")}') from None


def check_framing(path: str) -> int:
  """Walks the record headers of `path`; returns the record count.

  Raises:
    DataError: the file ends inside a record (truncated) or is not a TFRecord
      file (a length running past the end), naming the byte offset.
  """
  size = tf.io.gfile.stat(path).length
  offset = records = 0
  with tf.io.gfile.GFile(path, 'rb') as f:
    while offset < size:
      f.seek(offset)
      header = f.read(_HEADER_BYTES)
      if len(header) < _HEADER_BYTES:
        raise DataError(f'{path}: truncated TFRecord file: the record at byte offset {offset} '
                        f'has an incomplete header ({size} bytes in the file).')
      (length,) = struct.unpack('<Q', header[:8])
      end = offset + _HEADER_BYTES + length + _FOOTER_BYTES
      if end > size:
        raise DataError(f'{path}: truncated or not a TFRecord file: the record at byte offset '
                        f'{offset} declares {length} bytes, past the end of the file '
                        f'({size} bytes).')
      offset = end
      records += 1
  return records


class _FirstRecordChecker:
  """Decodes the first record of a file with the training decoder (traced once)."""

  def __init__(self, descriptor, decode_groundtruth_label: bool):
    from kmax_tf.data import tfrecord_decoder
    decoder = tfrecord_decoder.TFRecordDecoder(descriptor, decode_groundtruth_label)
    self._decode = tf.function(lambda record, path: decoder(record, path))

  def __call__(self, path: str) -> None:
    try:
      first = next(iter(tf.data.TFRecordDataset(path).take(1)), None)
    except tf.errors.OpError as error:
      raise DataError(f'{path}: not a readable TFRecord file (the first record fails: '
                      f'{_first_line(error.message)}).') from None
    if first is None:
      raise DataError(f'{path}: the TFRecord file holds no record.')
    try:
      self._decode(first, tf.constant(path))
    except tf.errors.OpError as error:
      raise DataError(f'{path}: the first record is not a usable DeepLab2 example: '
                      f'{_decoder_message(error.message)}') from None


def check_files(file_patterns: Sequence[str], field: str, descriptor=None,
                decode_groundtruth_label: bool = True) -> List[str]:
  """Checks every file of `file_patterns` (see the module docstring); returns them."""
  files = matched_files(file_patterns, field)
  checker = _FirstRecordChecker(descriptor, decode_groundtruth_label)
  for path in files:
    if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
      raise DataError(f'{path} (from {field}.file_pattern) is not a file.')
    if tf.io.gfile.stat(path).length == 0:
      raise DataError(f'{path} (from {field}.file_pattern) is empty.')
    if not is_remote(path):  # One small read per record: cheap only on a local disk.
      check_framing(path)
    checker(path)
  return files


def check_input_files(config, mode: str) -> None:
  """Checks the TFRecords `mode` reads (train and/or eval datasets) before any work.

  Raises:
    DataError: naming the first bad file and what is wrong with it.
  """
  from kmax_tf.data import dataset_descriptors
  for field, options in validation.datasets_read_by(config, mode):
    descriptor = dataset_descriptors.descriptor_from_options(options)
    check_files(options.file_pattern, field, descriptor,
                decode_groundtruth_label=options.decode_groundtruth_label)


def data_error_line(error: BaseException) -> Optional[str]:
  """One line for a data error raised by the input pipeline, else None.

  Recognizes the pipeline's corrupt/truncated TFRecord error (file and byte
  offset) and the decoder's record checks (which name the record and file).
  """
  if not isinstance(error, tf.errors.OpError):
    return None
  message = error.message
  match = _PIPELINE_ERROR.search(message)
  if match:
    return (f'{match.group("path").strip()}: TFRecord file is corrupt or truncated at byte '
            f'offset {match.group("offset")}.')
  match = _DECODER_ERROR.search(message)
  if match:
    return _decoder_message(message)
  return None


def _first_line(message: str) -> str:
  """TensorFlow's message without its function and op names, first line."""
  message = re.sub(r'\{\{function_node [^}]*\}\}\s*', '', message)
  message = re.sub(r'\s*\[Op:[^\]]*\].*', '', message.strip().split('\n')[0])
  return message.strip()[:300]


def _decoder_message(message: str) -> str:
  """The decoder's assertion text without TensorFlow's brackets and op names."""
  match = re.search(r'assertion failed: (.*?)(?:\n|\[Op:|\s+\[\[|$)', message, re.S)
  text = match.group(1) if match else _first_line(message)
  text = re.sub(r'\] \[', ' ', text).strip('[] ').replace('\\"', '"')
  return text[:500]
