"""Image reading: conversions to RGB and clear errors."""

import numpy as np
import pytest
from PIL import Image

from kmax_tf.export import image_io


def _save(path, array, mode=None):
  Image.fromarray(array, mode=mode).save(path)
  return path


def test_grayscale_rgba_and_16_bit_files_become_rgb(tmp_path):
  gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
  result = image_io.read_image(_save(tmp_path / 'gray.png', gray))
  assert result.shape == (3, 4, 3) and result.dtype == np.uint8
  np.testing.assert_array_equal(result[..., 1], gray)
  rgba = np.zeros((3, 4, 4), np.uint8)
  rgba[..., 0], rgba[..., 3] = 200, 7
  result = image_io.read_image(_save(tmp_path / 'rgba.png', rgba))
  np.testing.assert_array_equal(result[..., 0], 200)
  np.testing.assert_array_equal(result[..., 1:], 0)
  deep = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
  result = image_io.read_image(_save(tmp_path / 'deep.png', deep))
  assert result.shape == (3, 4, 3) and result[-1, -1, 0] == 255 and result[0, 0, 0] == 0


def test_bad_files_raise_image_read_error(tmp_path):
  text = tmp_path / 'notes.jpg'
  text.write_text('not an image')
  with pytest.raises(image_io.ImageReadError, match=r'notes\.jpg: not a readable image'):
    image_io.read_image(text)
  with pytest.raises(image_io.ImageReadError, match='no such file'):
    image_io.read_image(tmp_path / 'missing.png')
  truncated = tmp_path / 'cut.png'
  _save(truncated, np.zeros((64, 64, 3), np.uint8) + 9)
  truncated.write_bytes(truncated.read_bytes()[:60])
  with pytest.raises(image_io.ImageReadError, match='cut.png'):
    image_io.read_image(truncated)


def test_arrays_and_pil_images():
  gray = np.full((2, 3), 7, np.uint8)
  assert image_io.to_rgb_uint8(gray).shape == (2, 3, 3)
  assert image_io.to_rgb_uint8(gray[..., None]).shape == (2, 3, 3)
  floats = np.full((2, 3, 3), 254.6, np.float32)
  assert image_io.to_rgb_uint8(floats)[0, 0, 0] == 255
  rgba = np.full((2, 3, 4), 9, np.int32)
  assert image_io.to_rgb_uint8(rgba).shape == (2, 3, 3)
  assert image_io.to_rgb_uint8(Image.new('L', (3, 2), 5))[1, 2, 2] == 5
  with pytest.raises(image_io.ImageReadError, match=r'shape \(2, 3, 2\)'):
    image_io.to_rgb_uint8(np.zeros((2, 3, 2)))
  with pytest.raises(image_io.ImageReadError, match='NaN'):
    image_io.to_rgb_uint8(np.full((2, 3, 3), np.nan))
  with pytest.raises(image_io.ImageReadError, match='empty'):
    image_io.to_rgb_uint8(np.zeros((0, 3, 3), np.uint8))


def test_float_and_out_of_range_arrays_are_errors_not_silent_changes():
  photo = np.random.default_rng(0).uniform(0, 1, (4, 5, 3))
  # A [0, 1] float image would round to nearly black: an error saying so.
  with pytest.raises(image_io.ImageReadError, match=r'looks scaled to \[0, 1\].*Multiply by 255'):
    image_io.to_rgb_uint8(photo.astype(np.float32))
  np.testing.assert_array_equal(image_io.to_rgb_uint8(photo * 255),
                                np.round(photo * 255).astype(np.uint8))
  for bad, dtype in ((-1.0, np.float64), (255.5, np.float32), (256, np.int32), (300, np.uint16),
                     (-3, np.int8)):
    image = np.full((2, 3, 3), 10, dtype)
    image[1, 2, 0] = bad
    with pytest.raises(image_io.ImageReadError, match=r'pixel values must lie in \[0, 255\]'):
      image_io.to_rgb_uint8(image)
  # Integers in range keep their values (no wrap-around, no clipping).
  image = np.arange(6 * 3, dtype=np.int64).reshape(2, 3, 3) * 15
  np.testing.assert_array_equal(image_io.to_rgb_uint8(image), image.astype(np.uint8))
  assert image_io.to_rgb_uint8(np.zeros((2, 3, 3), np.float32)).max() == 0  # Black is black.
