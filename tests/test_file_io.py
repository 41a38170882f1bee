"""Atomic writes: no partial files, no silent overwrite, normal permissions."""

import os
import stat

import pytest

from kmax_tf import file_io


def test_write_refuses_overwrite_and_uses_umask_permissions(tmp_path):
  path = tmp_path / 'sub' / 'out.json'
  file_io.write_text_atomic(path, '{}')
  assert path.read_text() == '{}'
  umask = os.umask(0)
  os.umask(umask)
  assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
  with pytest.raises(FileExistsError, match='refusing to overwrite'):
    file_io.write_text_atomic(path, '[]')
  file_io.write_text_atomic(path, '[]', overwrite=True)
  assert path.read_text() == '[]'
  assert sorted(os.listdir(path.parent)) == ['out.json']


def test_failed_write_leaves_no_file(tmp_path):
  with pytest.raises(TypeError):
    file_io.write_bytes_atomic(tmp_path / 'x.bin', 'not bytes')
  assert os.listdir(tmp_path) == []


def test_remote_file_systems_go_through_gfile():
  import tensorflow as tf
  path = 'ram://file_io_test/sub/out.json'
  file_io.write_text_atomic(path, '{}')
  assert not os.path.exists('ram:')  # Not a local folder named "ram:".
  with tf.io.gfile.GFile(path) as f:
    assert f.read() == '{}'
  with pytest.raises(FileExistsError, match='refusing to overwrite'):
    file_io.write_text_atomic(path, '[]')
  file_io.write_text_atomic(path, '[]', overwrite=True)
  with tf.io.gfile.GFile(path) as f:
    assert f.read() == '[]'
  with pytest.raises(TypeError):
    file_io.write_bytes_atomic('ram://file_io_test/sub/x.bin', 'not bytes')
  assert sorted(tf.io.gfile.listdir('ram://file_io_test/sub')) == ['out.json']
