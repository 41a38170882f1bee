"""Resumable archive downloads with a progress bar and size / checksum checks.

Sources: http(s):// URLs through urllib (a partial file is continued with an
HTTP Range request), gs:// and other `scheme://` URLs through `tf.io.gfile`
(continued by seeking), and plain local paths or file:// URLs (a mirror
folder). The bytes go to a `.part` file that only the caller turns into
anything trusted, after `fetch` returned.
"""

import dataclasses
import hashlib
import http.client
import os
import re
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional

from kmax_tf.pretrained.registry import PretrainedError

CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 60
DEFAULT_ATTEMPTS = 3
_CONTENT_RANGE = re.compile(r'^bytes (\d+)-(\d+)/(\d+|\*)$')
_UNSATISFIED_RANGE = re.compile(r'^bytes \*/(\d+)$')
# Connection failures in the middle of a transfer: the next attempt resumes.
_TRANSFER_ERRORS = (http.client.IncompleteRead, http.client.RemoteDisconnected, ConnectionError,
                    socket.timeout, TimeoutError)


@dataclasses.dataclass(frozen=True)
class FetchResult:
  """A complete, verified download.

  Attributes:
    size: bytes.
    sha256: hex digest of the whole file.
    resumed_from: bytes already on disk when the first attempt started.
  """

  size: int
  sha256: str
  resumed_from: int


class _Progress:
  """A byte progress bar on stderr: tqdm when installed, else a line per 10 %."""

  def __init__(self, label: str, total: Optional[int], initial: int, enabled: bool):
    self._bar = None
    self._label, self._total, self._done = label, total, initial
    self._next_report = 0.1
    self._enabled = enabled
    if not enabled:
      return
    try:
      import tqdm  # (optional)
      self._bar = tqdm.tqdm(total=total, initial=initial, unit='B', unit_scale=True,
                            unit_divisor=1024, desc=label, file=sys.stderr, leave=False)
    except ImportError:
      print(f'Downloading {label} ({_format_size(total)})', file=sys.stderr)

  def reset(self, total: Optional[int], done: int) -> None:
    self._total, self._done = total, done
    if self._bar is not None:
      self._bar.reset(total=total)
      self._bar.update(done)

  def update(self, count: int) -> None:
    self._done += count
    if self._bar is not None:
      self._bar.update(count)
    elif self._enabled and self._total and self._done >= self._next_report * self._total:
      print(f'  {self._label}: {100 * self._done // self._total}% of '
            f'{_format_size(self._total)}', file=sys.stderr)
      self._next_report += 0.1

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


def _format_size(size: Optional[int]) -> str:
  if size is None:
    return 'unknown size'
  for unit in ('B', 'KiB', 'MiB', 'GiB'):
    if size < 1024 or unit == 'GiB':
      return f'{size:.0f} {unit}' if unit == 'B' else f'{size:.1f} {unit}'
    size /= 1024
  return str(size)


def _file_size(path: str) -> int:
  return os.path.getsize(path) if os.path.exists(path) else 0


def _copy(source, part_path: str, append: bool, progress: _Progress) -> None:
  # read1: what has arrived (up to a chunk), so the progress and the file advance steadily.
  read = getattr(source, 'read1', source.read)
  with open(part_path, 'ab' if append else 'wb') as target:
    while True:
      chunk = read(CHUNK_BYTES)
      if not chunk:
        break
      target.write(chunk)
      progress.update(len(chunk))


def _http_attempt(url: str, part_path: str, progress: _Progress) -> Optional[int]:
  """One HTTP request continuing `part_path`; returns the total size (None: unknown)."""
  offset = _file_size(part_path)
  headers = {'User-Agent': 'kmax_tf'}
  if offset:
    headers['Range'] = f'bytes={offset}-'
  try:
    response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                      timeout=TIMEOUT_SECONDS)
  except urllib.error.HTTPError as error:
    if error.code == 416 and offset:
      match = _UNSATISFIED_RANGE.match(error.headers.get('Content-Range', ''))
      if match and int(match.group(1)) == offset:
        return offset  # The partial file is already complete.
      os.remove(part_path)  # Longer than the remote file: start again.
      return _http_attempt(url, part_path, progress)
    raise PretrainedError(f'Download of {url} failed: HTTP {error.code} {error.reason}.') from None
  with response:
    total = None
    if response.status == 206:
      match = _CONTENT_RANGE.match(response.headers.get('Content-Range', ''))
      if not match or int(match.group(1)) != offset:
        raise PretrainedError(f'Download of {url}: the server answered the range request for '
                              f'bytes {offset}- with Content-Range '
                              f'{response.headers.get("Content-Range")!r}.')
      total = None if match.group(3) == '*' else int(match.group(3))
      append = True
    else:  # 200: the server ignores ranges; start from the beginning.
      length = response.headers.get('Content-Length')
      total = int(length) if length is not None else None
      append = False
      offset = 0
    progress.reset(total, offset)
    _copy(response, part_path, append, progress)
  return total


def _stream_attempt(url: str, part_path: str, progress: _Progress) -> Optional[int]:
  """Copies a gfile URL or local file, continuing `part_path`; returns the total size."""
  if url.startswith('file://'):
    url = urllib.parse.unquote(urllib.parse.urlparse(url).path)
  if '://' in url:
    import tensorflow as tf  # (gs:// and friends only)
    try:
      total = tf.io.gfile.stat(url).length
    except tf.errors.OpError as error:
      raise PretrainedError(f'Cannot read {url}: {error.message}') from None
    opener = lambda: tf.io.gfile.GFile(url, 'rb')
  else:
    if not os.path.isfile(url):
      raise PretrainedError(f'Mirror file {url} does not exist.')
    total = os.path.getsize(url)
    opener = lambda: open(url, 'rb')
  offset = _file_size(part_path)
  if offset > total:
    offset = 0
  progress.reset(total, offset)
  with opener() as source:
    source.seek(offset)
    _copy(source, part_path, offset > 0, progress)
  return total


def sha256_of(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(CHUNK_BYTES), b''):
      digest.update(chunk)
  return digest.hexdigest()


def fetch(url: str, part_path: str, expected_size: Optional[int] = None,
          expected_sha256: Optional[str] = None, attempts: int = DEFAULT_ATTEMPTS,
          progress: bool = True) -> FetchResult:
  """Downloads `url` into `part_path`, continuing what is already there.

  A transfer that stops early is continued (up to `attempts` requests in
  all); the file is then checked against the size the server announced, the
  registry's size and sha256 (when given).

  Args:
    url: http(s)://, gs:// (tf.io.gfile), file:// or a local path.
    part_path: the partial file (created or continued).
    expected_size: bytes, when known.
    expected_sha256: hex digest, when known.
    attempts: requests before a short transfer is an error.
    progress: show a progress bar on stderr.

  Returns:
    A FetchResult.

  Raises:
    PretrainedError: HTTP error, incomplete transfer (the partial file is
      kept, so that the next call resumes), or wrong size / checksum (the
      file is deleted).
  """
  os.makedirs(os.path.dirname(os.path.abspath(part_path)), exist_ok=True)
  resumed_from = _file_size(part_path)
  label = url.rsplit('/', 1)[-1]
  bar = _Progress(label, expected_size, resumed_from, progress)
  attempt_fn = _http_attempt if url.startswith(('http://', 'https://')) else _stream_attempt
  total, last_error = None, None
  try:
    for _ in range(max(1, attempts)):
      try:
        total = attempt_fn(url, part_path, bar)
        last_error = None
      except _TRANSFER_ERRORS as error:
        last_error = error
        continue
      except urllib.error.URLError as error:
        raise PretrainedError(
            f'Cannot download {url}: {error.reason}. Without direct access, set KMAX_TF_MIRROR to '
            'a folder or URL holding the same archive files, or KMAX_TF_OFFLINE=1 to use the '
            'cache only.') from error
      if total is None or _file_size(part_path) >= total:
        break
  finally:
    bar.close()
  size = _file_size(part_path)
  if last_error is not None or (total is not None and size < total):
    expected = f' of {total}' if total is not None else ''
    reason = f' ({type(last_error).__name__}: {last_error})' if last_error else ''
    raise PretrainedError(
        f'Download of {url} is incomplete after {attempts} attempt(s): {size}{expected} bytes'
        f'{reason}. The partial file {part_path} is kept: run again to resume.')
  for wanted, what in ((total, 'the server announced'), (expected_size, 'the registry expects')):
    if wanted is not None and size != wanted:
      os.remove(part_path)
      raise PretrainedError(f'Download of {url} has {size} bytes but {what} {wanted}; the '
                            'file was deleted.')
  digest = sha256_of(part_path)
  if expected_sha256 is not None and digest != expected_sha256:
    os.remove(part_path)
    raise PretrainedError(f'Checksum mismatch for {url}: sha256 {digest}, the registry expects '
                          f'{expected_sha256}; the file was deleted.')
  return FetchResult(size=size, sha256=digest, resumed_from=resumed_from)

