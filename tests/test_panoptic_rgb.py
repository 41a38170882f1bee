"""Tests for kmax_tf.panoptic_rgb, the one id <-> RGB codec (id = R + 256 G + 65536 B)."""

import io

import numpy as np
import pytest
from PIL import Image

from kmax_tf import panoptic_rgb
from kmax_tf.data import label_codec
from kmax_tf.evaluation import panoptic_png

_IDS = np.array([[0, 1, 255, 256], [65535, 65536, 300000, panoptic_rgb.MAX_ID]])


@pytest.mark.parametrize('dtype', [np.int32, np.int64, np.uint8, np.uint16, np.uint32])
def test_ids_to_rgb_accepts_integer_maps_with_or_without_channel_axis(dtype):
  ids = _IDS.astype(dtype) if np.iinfo(dtype).max >= _IDS.max() else (_IDS % 256).astype(dtype)
  rgb = panoptic_rgb.ids_to_rgb(ids)
  assert rgb.dtype == np.uint8 and rgb.shape == (2, 4, 3)
  np.testing.assert_array_equal(panoptic_rgb.ids_to_rgb(ids[..., None]), rgb)
  np.testing.assert_array_equal(panoptic_rgb.rgb_to_ids(rgb), ids)
  np.testing.assert_array_equal(panoptic_rgb.ids_to_rgb(np.array([[True, False]])),
                                [[[1, 0, 0], [0, 0, 0]]])


def test_ids_to_rgb_convention_and_rejections():
  # 300000 = 224 + 256 * 147 + 65536 * 4.
  assert panoptic_rgb.ids_to_rgb(_IDS)[1, 2].tolist() == [224, 147, 4]
  assert panoptic_rgb.ids_to_rgb(_IDS)[1, 3].tolist() == [255, 255, 255]
  for bad in (np.array([[1 << 24]]), np.array([[-1]])):
    with pytest.raises(ValueError, match=r'must be in \[0, 2\*\*24\)'):
      panoptic_rgb.ids_to_rgb(bad)
  with pytest.raises(ValueError, match='integer id map, got dtype float32'):
    panoptic_rgb.ids_to_rgb(np.zeros((2, 2), np.float32))
  for shape in ((4,), (2, 2, 3), (1, 2, 2, 1)):
    with pytest.raises(ValueError, match=r'shape \[height, width\]'):
      panoptic_rgb.ids_to_rgb(np.zeros(shape, np.int32))


def test_rgb_to_ids_accepts_rgb_rgba_and_single_channel():
  rgb = panoptic_rgb.ids_to_rgb(_IDS)
  rgba = np.concatenate([rgb, np.full((2, 4, 1), 7, np.uint8)], axis=-1)
  for dtype in (np.int32, np.uint32):
    for pixels in (rgb, rgba):
      ids = panoptic_rgb.rgb_to_ids(pixels, dtype)
      assert ids.dtype == dtype
      np.testing.assert_array_equal(ids, _IDS)
  grey = np.arange(8, dtype=np.uint8).reshape(2, 4)
  ids = panoptic_rgb.rgb_to_ids(grey, np.uint32)
  assert ids.dtype == np.uint32
  np.testing.assert_array_equal(ids, grey)
  assert panoptic_rgb.rgb_to_ids(rgb).dtype == np.int32  # The data pipeline's default.
  with pytest.raises(ValueError, match=r'\[H, W, 3 or 4\]'):
    panoptic_rgb.rgb_to_ids(np.zeros((2, 2, 2), np.uint8))
  with pytest.raises(ValueError, match='dtype must be'):
    panoptic_rgb.rgb_to_ids(rgb, np.int64)


def test_encode_png_is_read_back_by_pillow_data_and_evaluation():
  data = panoptic_rgb.encode_png(_IDS)
  with Image.open(io.BytesIO(data)) as image:
    assert image.mode == 'RGB'
    np.testing.assert_array_equal(np.asarray(image), panoptic_rgb.ids_to_rgb(_IDS))
  assert data == label_codec.encode_panoptic_png(_IDS.astype(np.int32))
  np.testing.assert_array_equal(label_codec.decode_label(data, 'panoptic_png', 2, 4), _IDS)
  np.testing.assert_array_equal(panoptic_png.decode_panoptic_png(data), _IDS)
