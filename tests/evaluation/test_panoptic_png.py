"""Tests for kmax_tf.evaluation.panoptic_png (fast COCO panoptic PNG decoding)."""

import io

import numpy as np
import pytest
from PIL import Image

from kmax_tf import panoptic_rgb
from kmax_tf.evaluation import panoptic_png


def _random_ids(height, width, seed):
  ids = np.random.default_rng(seed).integers(0, 1 << 24, size=(height, width)).astype(np.uint32)
  ids[height // 2:] = ids[height // 2]  # Flat rows too, so all PNG filters appear.
  return ids


@pytest.mark.parametrize('height,width', [(1, 1), (3, 7), (51, 428), (1, 21844), (37, 640)])
def test_fast_path_round_trip(height, width):
  # 51 x 428 fills exactly one 65535-byte stored block per block boundary.
  ids = _random_ids(height, width, seed=height * width)
  data = panoptic_rgb.encode_png(ids)
  decoder = panoptic_png._get_fast_decoder()
  if decoder is None:
    pytest.skip('libdeflate is not available: only the generic path exists here')
  np.testing.assert_array_equal(decoder.decode(data), ids)
  out = np.full(height * width + 5, 7, np.uint32)
  result = panoptic_png.decode_panoptic_png(data, out=out)
  np.testing.assert_array_equal(result, ids)
  assert np.shares_memory(result, out)


def test_generic_formats_follow_panopticapi_rgb2id(tmp_path):
  ids = _random_ids(6, 5, seed=1)
  rgb = panoptic_rgb.ids_to_rgb(ids)
  rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 9, np.uint8)], axis=-1)
  path = tmp_path / 'rgba.png'
  Image.fromarray(rgba, mode='RGBA').save(path)
  np.testing.assert_array_equal(panoptic_png.decode_panoptic_png(str(path)), ids)
  gray = np.arange(30, dtype=np.uint8).reshape(6, 5)
  buffer = io.BytesIO()
  Image.fromarray(gray).save(buffer, format='PNG')
  np.testing.assert_array_equal(panoptic_png.decode_panoptic_png(buffer.getvalue()), gray)
  out = np.zeros(40, np.uint32)
  np.testing.assert_array_equal(panoptic_png.decode_panoptic_png(buffer.getvalue(), out=out),
                                gray)
  with pytest.raises(ValueError, match='uint32'):
    panoptic_png.decode_panoptic_png(buffer.getvalue(), out=np.zeros(40, np.int64))


def test_ids_to_rgb_range():
  np.testing.assert_array_equal(panoptic_rgb.ids_to_rgb(np.array([[1 + 256 * 2 + 65536 * 3]])),
                                [[[1, 2, 3]]])
  with pytest.raises(ValueError, match=r'\[0, 2\*\*24\)'):
    panoptic_rgb.ids_to_rgb(np.array([[1 << 24]]))
