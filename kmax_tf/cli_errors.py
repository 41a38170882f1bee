"""Which errors the command-line tools answer with one line, and which keep their traceback.

A known user error is one that kmax_tf raised on purpose after checking the
input: a `ValueError` or `OSError` whose innermost frame is kmax_tf code (a
config, data, checkpoint or image check, a file that exists or is missing).
Its message names the file or field, so one line is the whole answer. Anything
else (an error raised inside TensorFlow, NumPy or any other library, or of
another type) is a failure the user cannot fix from a message alone: the tools
let it propagate with its traceback.
"""

import os
import sys
from typing import Optional

import kmax_tf

_PACKAGE_DIR = os.path.dirname(os.path.abspath(kmax_tf.__file__))
_KNOWN_TYPES = (ValueError, OSError)


def _innermost_file(error: BaseException) -> Optional[str]:
  traceback = error.__traceback__
  if traceback is None:
    return None
  while traceback.tb_next is not None:
    traceback = traceback.tb_next
  return os.path.abspath(traceback.tb_frame.f_code.co_filename)


def is_user_error(error: BaseException) -> bool:
  """True if `error` is a kmax_tf check's message (see the module docstring)."""
  if not isinstance(error, _KNOWN_TYPES):
    return False
  where = _innermost_file(error)
  return where is not None and where.startswith(_PACKAGE_DIR + os.sep)


def one_line(error: BaseException) -> str:
  """The message of a user error on one line."""
  return ' '.join(str(error).split('\n')).strip()


def print_or_raise(error: BaseException, prefix: str = 'Error') -> None:
  """Prints `prefix: message` to stderr for a user error; re-raises anything else.

  Call from an `except` block; the traceback of an unknown error is kept.
  """
  if not is_user_error(error):
    raise error
  print(f'{prefix}: {one_line(error)}', file=sys.stderr, flush=True)
