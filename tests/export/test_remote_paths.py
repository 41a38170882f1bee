"""Export and prediction I/O on TensorFlow's in-memory ram:// file system (stands for gs://).

Anything read or written through `os` / `open` instead of `tf.io.gfile` fails
here or leaves a local folder named "ram:" (checked).
"""

import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kmax_tf import file_io
from kmax_tf import predict
from kmax_tf.export import image_io
from kmax_tf.export import serving
from tests.export import tiny_config

ROOT = 'ram://remote_paths'


@pytest.fixture(autouse=True)
def _no_local_ram_folder(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  yield
  assert not os.path.exists(tmp_path / 'ram:')


def _write_png(path, array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='PNG')
  file_io.write_bytes_atomic(path, buffer.getvalue(), overwrite=True)


def test_images_are_read_and_listed_through_gfile():
  image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), np.uint8)
  _write_png(f'{ROOT}/images/b.png', image)
  _write_png(f'{ROOT}/images/a.png', image[::-1])
  file_io.write_text_atomic(f'{ROOT}/images/notes.txt', 'not an image', overwrite=True)
  np.testing.assert_array_equal(image_io.read_image(f'{ROOT}/images/b.png'), image)
  np.testing.assert_array_equal(image_io.to_rgb_uint8(f'{ROOT}/images/a.png'), image[::-1])
  with pytest.raises(image_io.ImageReadError, match=f'{ROOT}/images/missing.png: no such file'):
    image_io.read_image(f'{ROOT}/images/missing.png')
  with pytest.raises(image_io.ImageReadError, match='notes.txt: not a readable image'):
    image_io.read_image(f'{ROOT}/images/notes.txt')
  files, unmatched = predict.expand_image_paths([f'{ROOT}/images', f'{ROOT}/images/b*.png',
                                                 f'{ROOT}/none/*.png'])
  assert files == [f'{ROOT}/images/a.png', f'{ROOT}/images/b.png']
  assert unmatched == [f'{ROOT}/none/*.png']


def test_local_atomic_writes_go_through_gfile_too(tmp_path):
  file_io.write_bytes_atomic(tmp_path / 'sub' / 'x.bin', b'abc')
  assert (tmp_path / 'sub' / 'x.bin').read_bytes() == b'abc'
  with pytest.raises(FileExistsError, match='refusing to overwrite'):
    file_io.write_bytes_atomic(tmp_path / 'sub' / 'x.bin', b'def')
  assert os.listdir(tmp_path / 'sub') == ['x.bin']  # No temporary left.


def test_config_and_version_directories_on_ram():
  with open(tiny_config.BASE_CONFIG, 'rb') as f:
    file_io.write_bytes_atomic(f'{ROOT}/configs/tiny.textproto', f.read(), overwrite=True)
  config = serving.load_experiment_config(f'{ROOT}/configs/tiny.textproto')
  assert config.eval_dataset_options.dataset == 'coco_panoptic'
  with pytest.raises(ValueError, match='does not exist'):
    serving.load_experiment_config(f'{ROOT}/configs/none.textproto')
  base = f'{ROOT}/models/kmax'
  assert serving.resolve_version_dir(base) == f'{base}/1'
  file_io.write_bytes_atomic(f'{base}/1/saved_model.pb', b'', overwrite=True)
  tf.io.gfile.makedirs(f'{base}/notes')
  assert serving.resolve_version_dir(base) == f'{base}/2'
  with pytest.raises(ValueError, match='already exists and is not empty'):
    serving.resolve_version_dir(f'{base}/1')
