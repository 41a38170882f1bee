"""Atomic file writes (temp file + rename): readers never see a partial file.

Local paths use the operating system directly (no TensorFlow import, normal
permissions). Paths of other file systems (`gs://`, `ram://`, `s3://`, ...) go
through `tf.io.gfile`: the temporary file is renamed into place where the file
system can rename, which on GCS is a copy-then-delete that readers see only
once complete.
"""

import os
import tempfile
import uuid
from typing import Union

PathLike = Union[str, os.PathLike]


def write_bytes_atomic(path: PathLike, data: bytes, overwrite: bool = False) -> None:
  """Writes `data` to `path` so that readers never see a partial file.

  Args:
    path: destination; its folder is created if needed.
    data: file content.
    overwrite: replace an existing file; otherwise an existing file raises.

  Raises:
    FileExistsError: `path` exists and `overwrite` is False.
  """
  path = os.fspath(path)
  if is_remote(path):
    _write_bytes_gfile(path, data, overwrite)
    return
  if not overwrite and os.path.exists(path):
    raise FileExistsError(f'{path} already exists; refusing to overwrite it.')
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  handle, temp_path = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path) + '.',
                                       suffix='.tmp')
  try:
    with os.fdopen(handle, 'wb') as f:
      f.write(data)
    # mkstemp creates 0600 files; give the usual permissions (0666 less umask).
    os.chmod(temp_path, 0o666 & ~_current_umask())
    os.replace(temp_path, path)
  except BaseException:
    if os.path.exists(temp_path):
      os.remove(temp_path)
    raise


def is_remote(path: PathLike) -> bool:
  """True for a path of a TensorFlow file system other than the local disk (`gs://`, `ram://`)."""
  path = os.fspath(path)
  return '://' in path and not path.startswith('file://')


def _write_bytes_gfile(path: str, data: bytes, overwrite: bool) -> None:
  import tensorflow as tf  # noqa: PLC0415  (only for non-local file systems)
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise TypeError(f'data must be bytes, got {type(data).__name__}.')
  if not overwrite and tf.io.gfile.exists(path):
    raise FileExistsError(f'{path} already exists; refusing to overwrite it.')
  folder = path.rsplit('/', 1)[0]
  tf.io.gfile.makedirs(folder)
  temp_path = f'{folder}/.{path.rsplit("/", 1)[1]}.{uuid.uuid4().hex}.tmp'
  try:
    with tf.io.gfile.GFile(temp_path, 'wb') as f:
      f.write(bytes(data))
    tf.io.gfile.rename(temp_path, path, overwrite=True)
  except BaseException:
    if tf.io.gfile.exists(temp_path):
      tf.io.gfile.remove(temp_path)
    raise


def _current_umask() -> int:
  umask = os.umask(0)
  os.umask(umask)
  return umask


def write_text_atomic(path: PathLike, text: str, overwrite: bool = False) -> None:
  """`write_bytes_atomic` for UTF-8 text."""
  write_bytes_atomic(path, text.encode('utf-8'), overwrite=overwrite)
