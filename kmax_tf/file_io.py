"""Atomic file writes (temp file + os.replace): readers never see a partial file."""

import os
import tempfile
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


def _current_umask() -> int:
  umask = os.umask(0)
  os.umask(umask)
  return umask


def write_text_atomic(path: PathLike, text: str, overwrite: bool = False) -> None:
  """`write_bytes_atomic` for UTF-8 text."""
  write_bytes_atomic(path, text.encode('utf-8'), overwrite=overwrite)
