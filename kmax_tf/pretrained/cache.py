"""The local cache of downloaded models, filled atomically.

Layout under the cache root (`KMAX_TF_HOME`, default `$XDG_CACHE_HOME/kmax_tf`
or `~/.cache/kmax_tf`):

  downloads/<archive>.part   a download in progress (continued by the next call)
  downloads/<archive>.lock   held while one process downloads and extracts
  models/<name>/             an extracted model, with its marker file
  models/<name>/.kmax_tf_pretrained.json

An archive is extracted into a hidden `models/.tmp-<name>-*` folder, checked,
given its marker, and only then renamed to `models/<name>`. Only a folder with
a marker is trusted, so a killed download or extraction leaves nothing that a
later call uses (it continues the `.part` file, or starts again).

Environment:
  KMAX_TF_HOME     the cache root.
  KMAX_TF_OFFLINE  1: never download; use the cache or fail clearly.
  KMAX_TF_MIRROR   a URL or folder replacing everything up to the last '/' of
                   every archive URL (a copy of the archive files).
"""

import contextlib
import dataclasses
import glob
import json
import os
import shutil
import sys
import tempfile
from typing import Iterator, Optional

from absl import logging

from kmax_tf.pretrained import archive as archive_lib
from kmax_tf.pretrained import download
from kmax_tf.pretrained.registry import ModelEntry
from kmax_tf.pretrained.registry import PretrainedError

HOME_ENV = 'KMAX_TF_HOME'
OFFLINE_ENV = 'KMAX_TF_OFFLINE'
MIRROR_ENV = 'KMAX_TF_MIRROR'
MARKER = '.kmax_tf_pretrained.json'
MARKER_FORMAT = 'kmax_tf.pretrained_cache.v1'
_STAGING_PREFIX = '.tmp-'


@dataclasses.dataclass(frozen=True)
class CachedModel:
  """A model in the cache.

  Attributes:
    name: registry name.
    directory: its folder in the cache.
    checkpoint_path: the checkpoint prefix (what `load_deeplab2_checkpoint` reads).
    sha256 / size: of the archive it came from.
    source: where the archive was downloaded from.
  """

  name: str
  directory: str
  checkpoint_path: str
  sha256: str
  size: int
  source: str


def cache_root() -> str:
  """The cache root folder (see the module docstring)."""
  if os.environ.get(HOME_ENV):
    return os.path.abspath(os.path.expanduser(os.environ[HOME_ENV]))
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'kmax_tf')


def offline() -> bool:
  return os.environ.get(OFFLINE_ENV, '').strip().lower() in ('1', 'true', 'yes', 'on')


def source_url(entry: ModelEntry) -> str:
  """The archive URL, or its copy under KMAX_TF_MIRROR."""
  mirror = os.environ.get(MIRROR_ENV, '').strip()
  if not mirror:
    return entry.url
  return mirror.rstrip('/') + '/' + entry.archive_name


def model_directory(name: str) -> str:
  return os.path.join(cache_root(), 'models', name)


def _read_marker(directory: str) -> Optional[dict]:
  try:
    with open(os.path.join(directory, MARKER), encoding='utf-8') as f:
      marker = json.load(f)
  except (OSError, ValueError):
    return None
  return marker if isinstance(marker, dict) and marker.get('format') == MARKER_FORMAT else None


def cached_model(entry: ModelEntry) -> Optional[CachedModel]:
  """The cached copy of `entry`, if complete and matching the registry; else None."""
  directory = model_directory(entry.name)
  marker = _read_marker(directory)
  if marker is None or not isinstance(marker.get('checkpoint'), str):
    return None
  if entry.sha256 is not None and marker.get('sha256') != entry.sha256:
    return None  # The registry now names other bytes.
  prefix = os.path.join(directory, marker['checkpoint'])
  if not os.path.isfile(prefix + '.index'):
    return None
  return CachedModel(name=entry.name, directory=directory, checkpoint_path=prefix,
                     sha256=marker.get('sha256', ''), size=int(marker.get('size', 0)),
                     source=marker.get('source', ''))


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
  """An exclusive lock between processes sharing the cache (POSIX; a no-op elsewhere)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'a+b') as handle:
    try:
      import fcntl  # (POSIX only)
    except ImportError:  # pragma: no cover
      yield
      return
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


def _find_checkpoint(entry: ModelEntry, folder: str, archive: str) -> str:
  """The checkpoint prefix inside an extracted archive, relative to `folder`."""
  if os.path.isfile(os.path.join(folder, entry.checkpoint + '.index')):
    return entry.checkpoint
  found = sorted(os.path.relpath(path, folder)[:-len('.index')] for path in glob.glob(
      os.path.join(folder, '**', '*.index'), recursive=True))
  if len(found) == 1:
    logging.warning('Archive %s has no %s.index as the registry says; using its only '
                    'checkpoint %s.', archive, entry.checkpoint, found[0])
    return found[0]
  raise PretrainedError(f'Archive {archive} holds no checkpoint {entry.checkpoint!r} (its '
                        f'checkpoints: {", ".join(found) or "none"}).')


def _remove_stale_staging(models_dir: str, name: str) -> None:
  for stale in glob.glob(os.path.join(models_dir, f'{_STAGING_PREFIX}{name}-*')):
    shutil.rmtree(stale, ignore_errors=True)


def _install(entry: ModelEntry, archive: str, fetched: download.FetchResult,
             source: str) -> CachedModel:
  """Extracts a verified archive into the cache (atomically); deletes the archive."""
  models_dir = os.path.join(cache_root(), 'models')
  os.makedirs(models_dir, exist_ok=True)
  _remove_stale_staging(models_dir, entry.name)
  staging = tempfile.mkdtemp(prefix=f'{_STAGING_PREFIX}{entry.name}-', dir=models_dir)
  try:
    try:
      archive_lib.safe_extract(archive, staging)
      checkpoint = _find_checkpoint(entry, staging, source)
    except PretrainedError:
      os.remove(archive)  # Bad bytes: never extract them again.
      raise
    marker = {'format': MARKER_FORMAT, 'name': entry.name, 'source': source,
              'sha256': fetched.sha256, 'size': fetched.size, 'checkpoint': checkpoint}
    with open(os.path.join(staging, MARKER), 'w', encoding='utf-8') as f:
      json.dump(marker, f, indent=1)
    final = model_directory(entry.name)
    if os.path.isdir(final) and not os.path.islink(final):
      shutil.rmtree(final)  # An untrusted leftover (no marker, or another sha256).
    elif os.path.lexists(final):
      os.remove(final)
    os.rename(staging, final)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  os.remove(archive)
  return CachedModel(name=entry.name, directory=final,
                     checkpoint_path=os.path.join(final, checkpoint), sha256=fetched.sha256,
                     size=fetched.size, source=source)


def ensure_cached(entry: ModelEntry, progress: bool = True) -> CachedModel:
  """The cached model, downloading, verifying and extracting it first if needed.

  Raises:
    PretrainedError: offline without a cached copy, or a download / archive
      problem (the cache keeps no model from a failed call).
  """
  cached = cached_model(entry)
  if cached is not None:
    return cached
  if offline():
    raise PretrainedError(
        f'Pretrained model {entry.name!r} is not in the cache {cache_root()} and '
        f'{OFFLINE_ENV}=1 forbids downloading it. Download it where there is access '
        f'(python -m kmax_tf.pretrained download {entry.name}) and copy '
        f'{model_directory(entry.name)} here, or unset {OFFLINE_ENV}.')
  downloads = os.path.join(cache_root(), 'downloads')
  with _locked(os.path.join(downloads, entry.archive_name + '.lock')):
    cached = cached_model(entry)  # Another process may have finished meanwhile.
    if cached is not None:
      return cached
    source = source_url(entry)
    part = os.path.join(downloads, entry.archive_name + '.part')
    if progress:
      print(f'kmax_tf: downloading {entry.name} from {source}', file=sys.stderr)
    fetched = download.fetch(source, part, entry.size, entry.sha256, progress=progress)
    return _install(entry, part, fetched, source)
