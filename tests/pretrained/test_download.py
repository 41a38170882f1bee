"""Download, verification, resume, safe extraction and the cache, against 127.0.0.1."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from kmax_tf import pretrained
from kmax_tf.pretrained import cache as cache_lib
from tests.helpers import dl2_checkpoint
from tests.pretrained import conftest
from tests.pretrained.conftest import TINY
from tests.pretrained.conftest import TINY_CHECKPOINT
from tests.pretrained.conftest import TINY_STEM

ARCHIVE = f'{TINY_STEM}.tar.gz'
ARCHIVE_PATH = f'/{ARCHIVE}'
PART = f'downloads/{ARCHIVE}.part'
REPO = pathlib.Path(__file__).resolve().parents[2]


def _model_files(name=TINY, checkpoint=TINY_CHECKPOINT):
  return [f'models/{name}', f'models/{name}/{cache_lib.MARKER}',
          f'models/{name}/{checkpoint}.data-00000-of-00001', f'models/{name}/{checkpoint}.index']


def test_download_verifies_extracts_and_reuses_the_cache(cache, server, archives):
  assert pretrained.cached_checkpoint_path(TINY) is None
  cached = pretrained.download(TINY, progress=False)

  assert cached.checkpoint_path == str(cache / 'models' / TINY / TINY_CHECKPOINT)
  assert (cached.sha256, cached.size) == (archives.sha256[ARCHIVE], archives.size[ARCHIVE])
  assert cached.source == f'{server.url}/{ARCHIVE}'
  expected_keys = set(archives.values) | set(conftest.TRAINING_STATE)
  assert set(dl2_checkpoint.checkpoint_keys(cached.checkpoint_path)) == expected_keys
  # The archive and the staging folder are gone: only the model and its marker remain.
  assert conftest.cache_files(cache) == _model_files()
  assert server.requests == [(ARCHIVE_PATH, None)]
  # Later calls use the cache without asking the server.
  assert pretrained.checkpoint_path(TINY, progress=False) == cached.checkpoint_path
  assert pretrained.resolve_reference(f'pretrained:{TINY}') == cached.checkpoint_path
  assert pretrained.cached_checkpoint_path(TINY) == cached.checkpoint_path
  assert len(server.requests) == 1
  assert pretrained.resolve_reference('/some/ckpt-1') == '/some/ckpt-1'


def test_wrong_checksum_is_refused_and_leaves_the_cache_clean(cache, server):
  with pytest.raises(pretrained.PretrainedError,
                     match=f'Checksum mismatch for {server.url}/{ARCHIVE}: sha256 [0-9a-f]{{64}}, '
                     f'the registry expects {"0" * 64}; the file was deleted'):
    pretrained.download('kmax_tiny_badsum', progress=False)
  assert conftest.cache_files(cache) == []
  assert pretrained.cached_checkpoint_path('kmax_tiny_badsum') is None


def test_wrong_size_is_refused(cache, server, archives):
  size = archives.size[ARCHIVE]
  with pytest.raises(pretrained.PretrainedError,
                     match=f'has {size} bytes but the registry expects {size + 1}; the file was '
                     'deleted'):
    pretrained.download('kmax_tiny_badsize', progress=False)
  assert conftest.cache_files(cache) == []


def test_truncated_transfer_is_an_error_then_resumes(cache, server, archives):
  server.reset(cut_after=1000)  # Every response stops after 1000 bytes.
  with pytest.raises(pretrained.PretrainedError,
                     match=f'incomplete after 3 attempt\\(s\\): 3000 of {archives.size[ARCHIVE]} '
                     'bytes.*kept: run again to resume'):
    pretrained.download(TINY, progress=False)
  assert server.requests == [(ARCHIVE_PATH, None), (ARCHIVE_PATH, 'bytes=1000-'),
                             (ARCHIVE_PATH, 'bytes=2000-')]
  # Only the partial download: no model folder that a later call could trust.
  assert conftest.cache_files(cache) == [PART]
  assert (cache / PART).stat().st_size == 3000
  assert pretrained.cached_checkpoint_path(TINY) is None

  server.reset()
  cached = pretrained.download(TINY, progress=False)
  assert server.requests == [(ARCHIVE_PATH, 'bytes=3000-')]
  assert cached.sha256 == archives.sha256[ARCHIVE]
  assert not (cache / PART).exists()


def test_a_transfer_cut_once_is_resumed_in_the_same_call(cache, server, archives):
  server.reset(cut_after=5000, cut_times=1)
  cached = pretrained.download('kmax_tiny_unchecked', progress=False)  # Size from the server.
  assert server.requests == [(ARCHIVE_PATH, None), (ARCHIVE_PATH, 'bytes=5000-')]
  assert cached.sha256 == archives.sha256[ARCHIVE]


def test_a_server_ignoring_ranges_restarts_from_zero(cache, server, archives):
  part = cache / PART
  part.parent.mkdir(parents=True)
  part.write_bytes(b'x' * 4000)  # Not even the right bytes: a 200 answer replaces them.
  server.reset(ignore_range=True)
  cached = pretrained.download(TINY, progress=False)
  assert server.requests == [(ARCHIVE_PATH, 'bytes=4000-')]
  assert cached.sha256 == archives.sha256[ARCHIVE]


def _wait_for(predicate, timeout=60.0):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    time.sleep(0.05)
  return False


def test_a_killed_download_leaves_nothing_trusted_and_is_resumed(cache, server, archives):
  server.reset(stall_after=20000)
  env = dict(os.environ, PYTHONPATH=str(REPO))
  process = subprocess.Popen([sys.executable, '-m', 'kmax_tf.pretrained', 'download', TINY],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  try:
    part = cache / PART
    assert _wait_for(lambda: part.exists() and part.stat().st_size >= 20000), (
        process.poll(), server.requests)
  finally:
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
  assert conftest.cache_files(cache) == [PART]
  located = subprocess.run([sys.executable, '-m', 'kmax_tf.pretrained', 'path', TINY], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=60)
  assert located.returncode == 1 and f'{TINY} is not downloaded' in located.stderr

  server.reset()
  cached = pretrained.download(TINY, progress=False)
  assert server.requests == [(ARCHIVE_PATH, 'bytes=20000-')]
  assert cached.sha256 == archives.sha256[ARCHIVE]


def test_half_extracted_leftovers_are_not_trusted(cache, server, archives):
  # What a killed extraction, or a copy without its marker, leaves behind.
  for folder in (cache / 'models' / TINY, cache / 'models' / f'.tmp-{TINY}-killed'):
    (folder / TINY_STEM).mkdir(parents=True)
    (folder / f'{TINY_CHECKPOINT}.index').write_bytes(b'half')
  assert pretrained.cached_checkpoint_path(TINY) is None
  cached = pretrained.download(TINY, progress=False)
  assert set(dl2_checkpoint.checkpoint_keys(cached.checkpoint_path)) >= set(archives.values)
  assert conftest.cache_files(cache) == _model_files()


@pytest.mark.parametrize('name, message', [
    ('evil_dotdot', 'has a member path with "..": \'evil_dotdot/../../escaped_dotdot.txt\''),
    ('evil_absolute', 'has an absolute member path'),
    ('evil_symlink', "link 'evil_symlink/link' -> '../../..' points outside the extraction"),
    ('evil_hardlink', "link 'evil_hardlink/hard' -> '../outside/secret.txt' points outside"),
])
def test_unsafe_archives_are_refused(cache, server, archives, name, message):
  with pytest.raises(pretrained.PretrainedError, match=f'Archive .*{name}.tar.gz.*'):
    try:
      pretrained.download(name, progress=False)
    except pretrained.PretrainedError as error:
      assert message in str(error) and 'refusing to extract it' in str(error)
      raise
  assert conftest.cache_files(cache) == []
  root = archives.folder.parent
  assert sorted(p.name for p in (root / 'outside').iterdir()) == ['secret.txt']
  assert not list(root.rglob('escaped_*')) and not list(cache.parent.rglob('escaped_*'))


def test_an_archive_without_the_registered_checkpoint_uses_its_only_one(cache, server):
  path = pretrained.checkpoint_path('kmax_tiny_relaid', progress=False)
  assert path == str(cache / 'models' / 'kmax_tiny_relaid' / 'weights' / 'model')


def test_offline_mode_uses_the_cache_or_fails_clearly(cache, server, monkeypatch):
  monkeypatch.setenv('KMAX_TF_OFFLINE', '1')
  with pytest.raises(pretrained.PretrainedError,
                     match=f"'{TINY}' is not in the cache {cache} and KMAX_TF_OFFLINE=1 forbids "
                     'downloading it'):
    pretrained.checkpoint_path(TINY)
  assert server.requests == [] and conftest.cache_files(cache) == []
  monkeypatch.delenv('KMAX_TF_OFFLINE')
  path = pretrained.checkpoint_path(TINY, progress=False)
  monkeypatch.setenv('KMAX_TF_OFFLINE', '1')
  server.reset()
  assert pretrained.checkpoint_path(TINY) == path and server.requests == []


def test_mirrors_replace_the_url_folder(cache, server, archives, monkeypatch):
  monkeypatch.setenv('KMAX_TF_MIRROR', f'{server.url}/mirror/')
  cached = pretrained.download(TINY, progress=False)
  assert server.requests == [(f'/mirror/{ARCHIVE}', None)]
  assert cached.source == f'{server.url}/mirror/{ARCHIVE}'


@pytest.mark.parametrize('kind', ['folder', 'gfile'])
def test_mirror_folders_and_gfile_urls(cache, server, archives, monkeypatch, kind):
  mirror = str(archives.folder / 'mirror')
  if kind == 'gfile':  # A tf.io.gfile filesystem, read like gs://.
    import tensorflow as tf
    mirror = 'ram://kmax_tf_mirror'
    tf.io.gfile.makedirs(mirror)
    tf.io.gfile.copy(str(archives.folder / ARCHIVE), f'{mirror}/{ARCHIVE}', overwrite=True)
  monkeypatch.setenv('KMAX_TF_MIRROR', mirror)
  # A partial file is continued by seeking.
  part = cache / PART
  part.parent.mkdir(parents=True)
  part.write_bytes((archives.folder / ARCHIVE).read_bytes()[:3000])
  cached = pretrained.download(TINY, progress=False)
  assert (cached.sha256, cached.source) == (archives.sha256[ARCHIVE], f'{mirror}/{ARCHIVE}')
  assert server.requests == []


def test_http_errors_and_unknown_names_are_clear(cache, server, monkeypatch, tmp_path):
  monkeypatch.setenv('KMAX_TF_MIRROR', f'{server.url}/nowhere')
  with pytest.raises(pretrained.PretrainedError,
                     match=f'Download of {server.url}/nowhere/{ARCHIVE} failed: HTTP 404'):
    pretrained.download(TINY, progress=False)
  monkeypatch.setenv('KMAX_TF_MIRROR', 'http://127.0.0.1:9/closed')
  with pytest.raises(pretrained.PretrainedError, match='Cannot download http://127.0.0.1:9/'
                     'closed/.*set KMAX_TF_MIRROR'):
    pretrained.download(TINY, progress=False)
  assert conftest.cache_files(cache) == []
  with pytest.raises(pretrained.PretrainedError,
                     match="Unknown pretrained model 'kmax_tiny'. Did you mean kmax_tiny_demo"):
    pretrained.get_model('kmax_tiny')
  broken = tmp_path / 'broken.json'
  broken.write_text('{"format": "kmax_tf.pretrained_registry.v1", "models": [{"name": "x"}]}')
  monkeypatch.setenv('KMAX_TF_REGISTRY', str(broken))
  with pytest.raises(pretrained.PretrainedError,
                     match=f"{broken}: model 'x' lacks the string field\\(s\\) kind, restore, url"):
    pretrained.list_models()
