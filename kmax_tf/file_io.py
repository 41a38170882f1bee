"""File access for every file system: atomic writes (temp file + rename) and reads.

Every path goes through `tf.io.gfile`, so local paths, `gs://`, `ram://`,
`s3://`, ... are written the same way: the content goes to a hidden temporary
file next to the destination, which is then renamed into place. A local
rename is atomic; on GCS it is a copy-then-delete that readers see only once
complete. Files get the usual permissions (0666 less the umask).

Reads and checks (`read_bytes`, `is_file`, `is_dir`) take local paths without
importing TensorFlow (the PQ command line stays light) and any other path
through `tf.io.gfile`.
"""

import os
import uuid
from typing import Union

PathLike = Union[str, os.PathLike]


def is_remote(path: PathLike) -> bool:
  """True for a path of a TensorFlow file system other than the local disk (`gs://`, `ram://`)."""
  path = os.fspath(path)
  return '://' in path and not path.startswith('file://')


def read_bytes(path: PathLike) -> bytes:
  """The content of a local or remote file; OSError (FileNotFoundError) if unreadable."""
  path = os.fspath(path)
  if not is_remote(path):
    with open(path, 'rb') as f:
      return f.read()
  import tensorflow as tf
  try:
    with tf.io.gfile.GFile(path, 'rb') as f:
      return f.read()
  except tf.errors.NotFoundError as error:
    raise FileNotFoundError(f'{path}: {error.message}') from None
  except tf.errors.OpError as error:
    raise OSError(f'{path}: {error.message}') from None


def is_file(path: PathLike) -> bool:
  path = os.fspath(path)
  if not is_remote(path):
    return os.path.isfile(path)
  import tensorflow as tf
  return tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)


def is_dir(path: PathLike) -> bool:
  path = os.fspath(path)
  if not is_remote(path):
    return os.path.isdir(path)
  import tensorflow as tf
  return tf.io.gfile.isdir(path)


def _split(path: str):
  """(folder, file name) of a local or remote path."""
  if is_remote(path):
    folder, _, name = path.rpartition('/')
    return folder, name
  path = os.path.abspath(path)
  return os.path.dirname(path), os.path.basename(path)


def write_bytes_atomic(path: PathLike, data: bytes, overwrite: bool = False) -> None:
  """Writes `data` to `path` so that readers never see a partial file.

  Args:
    path: destination; its folder is created if needed.
    data: file content.
    overwrite: replace an existing file; otherwise an existing file raises.

  Raises:
    FileExistsError: `path` exists and `overwrite` is False.
    TypeError: `data` is not bytes.
  """
  import tensorflow as tf  # keeps `import kmax_tf.file_io` light
  path = os.fspath(path)
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise TypeError(f'data must be bytes, got {type(data).__name__}.')
  if not overwrite and tf.io.gfile.exists(path):
    raise FileExistsError(f'{path} already exists; refusing to overwrite it.')
  folder, name = _split(path)
  tf.io.gfile.makedirs(folder)
  temp_path = f'{folder}/.{name}.{uuid.uuid4().hex}.tmp'
  try:
    with tf.io.gfile.GFile(temp_path, 'wb') as f:
      f.write(bytes(data))
    tf.io.gfile.rename(temp_path, path, overwrite=True)
  except BaseException:
    if tf.io.gfile.exists(temp_path):
      tf.io.gfile.remove(temp_path)
    raise


def write_text_atomic(path: PathLike, text: str, overwrite: bool = False) -> None:
  """`write_bytes_atomic` for UTF-8 text."""
  write_bytes_atomic(path, text.encode('utf-8'), overwrite=overwrite)
