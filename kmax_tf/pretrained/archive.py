"""Safe extraction of downloaded .tar.gz archives.

Every member is checked before anything is written: absolute names, `..`
components, links that point outside the target folder (or are absolute),
and device files / FIFOs refuse the whole archive. Reading the member list
reads the whole compressed stream, so a truncated or corrupt archive also
fails here, before extraction.
"""

import gzip
import posixpath
import tarfile
import zlib
from typing import List

from kmax_tf.pretrained.registry import PretrainedError


def _inside(path: str) -> bool:
  """Whether a normalised relative POSIX path stays inside its root."""
  return path != '..' and not path.startswith('../') and not posixpath.isabs(path)


def _check_member(member: tarfile.TarInfo, archive: str) -> None:
  name = member.name
  parts = name.replace('\\', '/').split('/')
  if posixpath.isabs(name) or name.startswith('\\') or (len(name) > 1 and name[1] == ':'):
    raise PretrainedError(f'Archive {archive} has an absolute member path {name!r}; refusing '
                          'to extract it.')
  if '..' in parts:
    raise PretrainedError(f'Archive {archive} has a member path with "..": {name!r}; refusing '
                          'to extract it.')
  if member.issym() or member.islnk():
    target = member.linkname
    if posixpath.isabs(target):
      raise PretrainedError(f'Archive {archive}: link {name!r} points to the absolute path '
                            f'{target!r}; refusing to extract it.')
    # Symlinks resolve from the link's folder, hard links from the archive root.
    base = posixpath.dirname(name) if member.issym() else ''
    if not _inside(posixpath.normpath(posixpath.join(base, target))):
      raise PretrainedError(f'Archive {archive}: link {name!r} -> {target!r} points outside '
                            'the extraction folder; refusing to extract it.')
  elif not (member.isfile() or member.isdir()):
    raise PretrainedError(f'Archive {archive}: member {name!r} is a device file or FIFO; '
                          'refusing to extract it.')


def safe_extract(archive_path: str, target_dir: str) -> List[str]:
  """Extracts a .tar.gz into `target_dir` after checking every member.

  Args:
    archive_path: the archive file.
    target_dir: an existing (empty) folder.

  Returns:
    The member names, as listed in the archive.

  Raises:
    PretrainedError: unsafe member, or a corrupt / truncated archive.
  """
  try:
    with tarfile.open(archive_path, 'r:*') as tar:
      members = tar.getmembers()
      for member in members:
        _check_member(member, archive_path)
      if hasattr(tarfile, 'data_filter'):
        tar.extractall(target_dir, members=members, filter='data')  # A second line of defense.
      else:  # pragma: no cover  (Python < 3.11.4; the checks above still apply)
        tar.extractall(target_dir, members=members)
  except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as error:
    raise PretrainedError(f'Archive {archive_path} is corrupt or truncated '
                          f'({type(error).__name__}: {error}).') from None
  return [member.name for member in members]
