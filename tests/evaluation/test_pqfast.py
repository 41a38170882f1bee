"""Tests for the optional C extension kmax_tf.evaluation._pqfast and its fallback.

PNGs with chosen row filters are written here byte by byte (Pillow picks
filters itself), then decoded by the C path, by Pillow (`PIL.Image.open`, the
reference) and by the pure Python fallback (KMAX_DISABLE_PQFAST=1).
"""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from kmax_tf import panoptic_rgb
from kmax_tf.evaluation import coco_panoptic_evaluation as cpe
from kmax_tf.evaluation import panoptic_png
from tests.evaluation import pq_test_utils
from tests.helpers import synthetic_panoptic

_pqfast = pytest.importorskip(
    'kmax_tf.evaluation._pqfast',
    reason='C extension not built (no compiler at install time): only the fallback exists')

_COLOR_TYPE = {1: 0, 3: 2, 4: 6}  # Channels -> PNG color type (grey, RGB, RGBA).


@pytest.fixture(autouse=True)
def _extension_enabled(monkeypatch):
  """These tests need the C path on even if the caller's environment disables it."""
  monkeypatch.delenv('KMAX_DISABLE_PQFAST', raising=False)
  assert panoptic_png.native_module() is _pqfast


def _paeth(left, up, up_left):
  estimate = left + up - up_left
  distances = (abs(estimate - left), abs(estimate - up), abs(estimate - up_left))
  return (left, up, up_left)[distances.index(min(distances))]


def _filter_row(filter_type, row, previous, bpp):
  """PNG forward filter of one row of bytes (ints), as in the PNG specification."""
  out = []
  for i, value in enumerate(row):
    left = row[i - bpp] if i >= bpp else 0
    up = previous[i]
    up_left = previous[i - bpp] if i >= bpp else 0
    predicted = (0, left, up, (left + up) // 2, _paeth(left, up, up_left))[filter_type]
    out.append((value - predicted) % 256)
  return out


def _chunk(chunk_type, payload):
  return (struct.pack('>I', len(payload)) + chunk_type + payload +
          struct.pack('>I', zlib.crc32(chunk_type + payload) & 0xFFFFFFFF))


def _png_with_filters(pixels, filters, idat_parts=1):
  """pixels: uint8 [H, W, C] (C = 1, 3, 4); filters: one type per row (0-255 allowed)."""
  height, width, channels = pixels.shape
  previous = [0] * (width * channels)
  raw = bytearray()
  for y in range(height):
    row = pixels[y].reshape(-1).tolist()
    raw.append(filters[y])
    raw.extend(_filter_row(filters[y] if filters[y] <= 4 else 0, row, previous, channels))
    previous = row
  stream = zlib.compress(bytes(raw), 9)
  cuts = np.linspace(0, len(stream), idat_parts + 1).astype(int)
  header = struct.pack('>IIBBBBB', width, height, 8, _COLOR_TYPE[channels], 0, 0, 0)
  return (b'\x89PNG\r\n\x1a\n' + _chunk(b'IHDR', header) +
          b''.join(_chunk(b'IDAT', stream[a:b]) for a, b in zip(cuts[:-1], cuts[1:])) +
          _chunk(b'IEND', b''))


def _label_like_pixels(height, width, channels, seed):
  """Flat regions (so shortcuts trigger), a few random rows and pixels (so they don't)."""
  rng = np.random.default_rng(seed)
  palette = rng.integers(0, 256, size=(6, channels), dtype=np.uint8)
  regions = (np.arange(width)[None, :] * 3 // max(width, 1) +
             3 * (np.arange(height)[:, None] * 2 // max(height, 1)))
  pixels = palette[regions]
  noisy = rng.random((height, width)) < 0.05
  pixels[noisy] = rng.integers(0, 256, size=(int(noisy.sum()), channels), dtype=np.uint8)
  if height > 2:
    pixels[height // 3] = rng.integers(0, 256, size=(width, channels), dtype=np.uint8)
  return pixels


def _pillow_ids(data):
  with Image.open(io.BytesIO(data)) as image:
    array = np.array(image)
  return panoptic_rgb.rgb_to_ids(array) if array.ndim == 3 else array.astype(np.uint32)


def _decode_both(data, monkeypatch):
  """(C path result, pure Python fallback result)."""
  native = panoptic_png.decode_panoptic_png(data)
  with monkeypatch.context() as patch:
    patch.setenv('KMAX_DISABLE_PQFAST', '1')
    assert panoptic_png.native_module() is None
    fallback = panoptic_png.decode_panoptic_png(data)
  return native, fallback


@pytest.mark.parametrize('channels', [1, 3, 4])
@pytest.mark.parametrize('filter_type', [0, 1, 2, 3, 4, 'mixed'])
def test_every_filter_type_matches_pillow(channels, filter_type, monkeypatch):
  height, width = 9, 13
  pixels = _label_like_pixels(height, width, channels, seed=channels * 10 + 3)
  if filter_type == 'mixed':
    filters = list(np.random.default_rng(5).integers(0, 5, size=height))
  else:
    filters = [filter_type] * height
  data = _png_with_filters(pixels, filters, idat_parts=2)
  expected = _pillow_ids(data)
  if channels == 3:
    np.testing.assert_array_equal(expected, panoptic_rgb.rgb_to_ids(pixels))
  native, fallback = _decode_both(data, monkeypatch)
  np.testing.assert_array_equal(native, expected)
  np.testing.assert_array_equal(fallback, expected)
  # Straight through the extension too (not only via a fallback that would hide a bug).
  raw = zlib.decompress(b''.join(
      data[p + 8:p + 8 + struct.unpack_from('>I', data, p)[0]]
      for p in _chunk_offsets(data, b'IDAT')))
  out = np.zeros(height * width, np.uint32)
  _pqfast.unfilter_ids(raw, width, height, channels, out)
  np.testing.assert_array_equal(out.reshape(height, width), expected)


def _chunk_offsets(data, chunk_type):
  pos, offsets = 8, []
  while pos + 8 <= len(data):
    (length,) = struct.unpack_from('>I', data, pos)
    if data[pos + 4:pos + 8] == chunk_type:
      offsets.append(pos)
    pos += 12 + length
  return offsets


@pytest.mark.parametrize('channels', [1, 3, 4])
def test_few_distinct_values_exercise_paeth_ties(channels, monkeypatch):
  """Bytes from {0, 1, 128, 255}: many Paeth ties and wrap-arounds."""
  rng = np.random.default_rng(channels)
  pixels = rng.choice(np.array([0, 1, 128, 255], np.uint8), size=(12, 17, channels))
  pixels[4:7, 3:12] = pixels[4, 3]
  filters = list(rng.integers(0, 5, size=12))
  data = _png_with_filters(pixels, filters)
  native, fallback = _decode_both(data, monkeypatch)
  np.testing.assert_array_equal(native, _pillow_ids(data))
  np.testing.assert_array_equal(fallback, native)


@pytest.mark.parametrize('height,width', [(1, 1), (1, 2), (2, 1), (5, 3), (4, 641)])
def test_edge_sizes_and_pillow_written_pngs(height, width, monkeypatch):
  for channels in (3, 4):
    pixels = _label_like_pixels(height, width, channels, seed=height + width)
    filters = [(y * 3 + 1) % 5 for y in range(height)]
    data = _png_with_filters(pixels, filters)
    native, fallback = _decode_both(data, monkeypatch)
    np.testing.assert_array_equal(native, _pillow_ids(data))
    np.testing.assert_array_equal(fallback, native)
  # Pillow's own encoder (adaptive filters), as for real COCO panoptic PNGs.
  ids = np.random.default_rng(height).integers(0, 1 << 24, size=(height, width)).astype(np.uint32)
  ids[height // 2:] = ids[height // 2]
  native, fallback = _decode_both(panoptic_rgb.encode_png(ids), monkeypatch)
  np.testing.assert_array_equal(native, ids)
  np.testing.assert_array_equal(fallback, ids)


_SIMD_CHECK = """
import sys
import numpy as np
from kmax_tf.evaluation import panoptic_png
from kmax_tf.evaluation import _pqfast
from tests.evaluation import test_pqfast as t
print('SSSE3', _pqfast.SSSE3)
for width in list(range(1, 20)) + [641]:
  pixels = t._label_like_pixels(6, width, 3, seed=width)
  data = t._png_with_filters(pixels, [2, 2, 1, 2, 4, 2])
  assert np.array_equal(panoptic_png.decode_panoptic_png(data), t._pillow_ids(data)), width
print('ok')
"""


@pytest.mark.parametrize('no_simd', ['', '1'])
def test_up_rows_with_and_without_simd(no_simd):
  """RGB Up rows use SSSE3 when the CPU has it; KMAX_PQFAST_NO_SIMD=1 (read at import) not."""
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = dict(os.environ, KMAX_PQFAST_NO_SIMD=no_simd, KMAX_DISABLE_PQFAST='')
  if not no_simd:
    del env['KMAX_PQFAST_NO_SIMD']
  result = subprocess.run([sys.executable, '-c', _SIMD_CHECK], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0 and result.stdout.split()[-1] == 'ok', result.stderr[-2000:]
  if no_simd:
    assert 'SSSE3 0' in result.stdout


def test_zlib_inflate_when_libdeflate_is_missing():
  """Without libdeflate the extension still unfilters (rows inflated by zlib)."""
  decoder = panoptic_png._FastDecoder(None)
  pixels = _label_like_pixels(7, 30, 3, seed=9)
  data = _png_with_filters(pixels, [0, 1, 2, 3, 4, 2, 1], idat_parts=3)
  np.testing.assert_array_equal(decoder.decode(data, native=_pqfast), _pillow_ids(data))
  assert decoder.decode(data, native=None) is None  # No Pillow row path without libdeflate.
  raw, width, height, channels = decoder.inflate_for_native(data, 'rows')
  assert (width, height, channels) == (30, 7, 3) and len(raw) == 7 * 91
  assert decoder.decode(data[:-30], native=_pqfast) is None  # Damaged: left to Pillow.


def test_decode_reuses_out_buffer():
  ids = np.arange(12, dtype=np.uint32).reshape(3, 4) * 99991
  out = np.full(20, 7, np.uint32)
  result = panoptic_png.decode_panoptic_png(panoptic_rgb.encode_png(ids), out=out)
  np.testing.assert_array_equal(result, ids)
  assert np.shares_memory(result, out)


def test_unfilter_ids_rejects_malformed_input():
  width, height = 4, 3
  raw = bytes([2] + [0] * 12) * height
  out = np.zeros(width * height, np.uint32)
  bad_filter = bytearray(raw)
  bad_filter[13] = 5  # Row 1's filter byte.
  with pytest.raises(ValueError, match='row 1 has invalid filter type 5'):
    _pqfast.unfilter_ids(bytes(bad_filter), width, height, 3, out)
  with pytest.raises(ValueError, match='has 38 bytes after inflating.*needs 39'):
    _pqfast.unfilter_ids(raw[:-1], width, height, 3, out)
  with pytest.raises(ValueError, match='needs 39'):
    _pqfast.unfilter_ids(raw + b'\0', width, height, 3, out)
  with pytest.raises(ValueError, match='output buffer has 44 bytes, needs 48'):
    _pqfast.unfilter_ids(raw, width, height, 3, out[:-1])
  with pytest.raises(ValueError, match='channels must be 1, 3 or 4'):
    _pqfast.unfilter_ids(raw, width, height, 2, out)
  for bad_width, bad_height in ((0, 3), (4, -1)):
    with pytest.raises(ValueError, match='bad image size'):
      _pqfast.unfilter_ids(raw, bad_width, bad_height, 3, out)
  for huge_width, huge_height in ((2**62, 2), (2**31, 2**31)):
    with pytest.raises(ValueError, match='too large'):
      _pqfast.unfilter_ids(raw, huge_width, huge_height, 4, out)
  with pytest.raises(TypeError):
    _pqfast.unfilter_ids(raw, width, height, 3, bytes(48))  # Read-only output.
  with pytest.raises(ValueError, match='not 4-byte aligned'):
    _pqfast.unfilter_ids(raw, width, height, 3, memoryview(bytearray(49))[1:])
  np.testing.assert_array_equal(out, 0)  # Nothing was written by the failed calls...
  _pqfast.unfilter_ids(raw, width, height, 3, out)  # ...and a good call still works.


def test_malformed_png_files_raise_clear_errors(monkeypatch):
  pixels = _label_like_pixels(5, 6, 3, seed=1)
  bad_filter = _png_with_filters(pixels, [1, 2, 9, 4, 0])
  with pytest.raises(ValueError, match='row 2 has invalid filter type 9'):
    panoptic_png.decode_panoptic_png(bad_filter)
  good = _png_with_filters(pixels, [1, 2, 3, 4, 0])
  for damaged in (good[:-45], good[:40], good[:33] + b'\0' * 10 + good[43:]):
    with pytest.raises((ValueError, OSError, SyntaxError)):
      panoptic_png.decode_panoptic_png(damaged)
  # The file evaluation names the file.
  with pytest.raises(ValueError, match='Cannot decode PNG bad.png: PNG row 2'):
    cpe._decode(bad_filter, 'bad.png', cpe._workspace(), 'gt_ids')


def _pair_counts_numpy(gt_map, pred_map, gt_ids, pred_ids):
  gt_index = np.searchsorted(np.concatenate([[0], gt_ids]), gt_map)
  pred_index = np.searchsorted(np.concatenate([[0], pred_ids]), pred_map)
  return np.bincount(gt_index * (len(pred_ids) + 1) + pred_index,
                     minlength=(len(gt_ids) + 1) * (len(pred_ids) + 1))


def test_pair_counts_matches_bincount():
  rng = np.random.default_rng(3)
  gt_ids = np.sort(rng.choice(np.arange(1, 1 << 24), size=40, replace=False)).astype(np.int64)
  pred_ids = np.sort(rng.choice(np.arange(1, 1 << 24), size=25, replace=False)).astype(np.int64)
  # Runs of many lengths (the block skip covers 16 pixels) plus isolated pixels.
  lengths = rng.integers(1, 60, size=400)
  gt_map = np.repeat(rng.choice(np.concatenate([[0], gt_ids]), size=400), lengths)
  pred_map = np.repeat(rng.choice(np.concatenate([[0], pred_ids]), size=400), lengths[::-1])
  pred_map = pred_map[:gt_map.size] if pred_map.size >= gt_map.size else np.resize(
      pred_map, gt_map.size)
  gt_map, pred_map = gt_map.astype(np.uint32), pred_map.astype(np.uint32)
  for size in (0, 1, 15, 16, 17, gt_map.size):
    counts = np.full((len(gt_ids) + 1) * (len(pred_ids) + 1), -5, np.int64)
    assert _pqfast.pair_counts(gt_map[:size], pred_map[:size], gt_ids, pred_ids, counts) == 0
    np.testing.assert_array_equal(
        counts, _pair_counts_numpy(gt_map[:size], pred_map[:size], gt_ids, pred_ids))


def test_pair_counts_reports_unknown_ids_and_rejects_bad_arguments():
  gt_ids, pred_ids = np.array([5, 9], np.int64), np.array([7], np.int64)
  counts = np.zeros(3 * 2, np.int64)
  gt_map = np.array([5, 5, 9, 0] * 5, np.uint32)
  pred_map = np.array([7, 0, 7, 7] * 5, np.uint32)
  assert _pqfast.pair_counts(gt_map, pred_map, gt_ids, pred_ids, counts) == 0
  assert counts.tolist() == [0, 5, 5, 5, 0, 5]
  gt_unknown = gt_map.copy()
  gt_unknown[-1] = 6
  assert _pqfast.pair_counts(gt_unknown, pred_map, gt_ids, pred_ids, counts) == 1
  pred_unknown = pred_map.copy()
  pred_unknown[0] = 8
  assert _pqfast.pair_counts(gt_map, pred_unknown, gt_ids, pred_ids, counts) == 2
  with pytest.raises(ValueError, match='20 pixels but pred_map has 19'):
    _pqfast.pair_counts(gt_map, pred_map[:-1], gt_ids, pred_ids, counts)
  with pytest.raises(ValueError, match='gt_map must hold 4-byte items'):
    _pqfast.pair_counts(gt_map.astype(np.int64), pred_map, gt_ids, pred_ids, counts)
  with pytest.raises(ValueError, match='pred_ids must hold 8-byte items'):
    _pqfast.pair_counts(gt_map, pred_map, gt_ids, pred_ids.astype(np.int32), counts)
  with pytest.raises(ValueError, match=r'counts has 5 entries, needs \(2 \+ 1\) \* \(1 \+ 1\)'):
    _pqfast.pair_counts(gt_map, pred_map, gt_ids, pred_ids, counts[:5])
  for bad_ids in ([5, 5], [0, 9], [-1, 9], [5, 1 << 32]):
    with pytest.raises(ValueError, match='duplicated or not in'):
      _pqfast.pair_counts(gt_map, pred_map, np.array(bad_ids, np.int64), pred_ids, counts)
  with pytest.raises(BufferError):
    _pqfast.pair_counts(gt_map, pred_map, gt_ids, pred_ids, counts.tobytes())  # Read-only.
  with pytest.raises(ValueError, match='not C-contiguous|contiguous'):
    _pqfast.pair_counts(np.repeat(gt_map, 2)[::2], pred_map, gt_ids, pred_ids, counts)


def _inflated(data):
  raw = zlib.decompress(b''.join(
      data[p + 8:p + 8 + struct.unpack_from('>I', data, p)[0]]
      for p in _chunk_offsets(data, b'IDAT')))
  return raw


@pytest.mark.parametrize('gt_channels,pred_channels', [(3, 3), (3, 4), (4, 1), (1, 3)])
def test_pair_counts_png_equals_map_path(gt_channels, pred_channels):
  height, width = 23, 37
  rng = np.random.default_rng(gt_channels * 7 + pred_channels)
  datas, maps = [], []
  for channels, seed in ((gt_channels, 1), (pred_channels, 2)):
    pixels = _label_like_pixels(height, width, channels, seed=seed)
    pixels[5:9] = pixels[4]  # Repeated rows (skipped as unchanged).
    data = _png_with_filters(pixels, list(rng.integers(0, 5, size=height)))
    datas.append(data)
    maps.append(_pillow_ids(data))
  gt_ids = np.unique(maps[0][maps[0] > 0]).astype(np.int64)
  pred_ids = np.unique(maps[1][maps[1] > 0]).astype(np.int64)
  counts = np.full((len(gt_ids) + 1) * (len(pred_ids) + 1), -1, np.int64)
  status = _pqfast.pair_counts_png(_inflated(datas[0]), gt_channels, _inflated(datas[1]),
                                   pred_channels, width, height, gt_ids, pred_ids, counts)
  assert status == 0
  np.testing.assert_array_equal(
      counts, _pair_counts_numpy(maps[0].ravel(), maps[1].ravel(), gt_ids, pred_ids))
  # An id missing from a list is reported (GT: 1, prediction: 2).
  assert _pqfast.pair_counts_png(_inflated(datas[0]), gt_channels, _inflated(datas[1]),
                                 pred_channels, width, height, gt_ids[1:], pred_ids,
                                 counts[len(pred_ids) + 1:]) == 1
  short = np.empty(len(gt_ids) + 1, np.int64)
  assert _pqfast.pair_counts_png(_inflated(datas[0]), gt_channels, _inflated(datas[1]),
                                 pred_channels, width, height, gt_ids, pred_ids[:0], short) == 2


def test_pair_counts_png_rejects_malformed_input():
  pixels = _label_like_pixels(5, 6, 3, seed=4)
  good = _inflated(_png_with_filters(pixels, [1, 2, 3, 4, 0]))
  bad = _inflated(_png_with_filters(pixels, [1, 2, 3, 7, 0]))
  ids = np.unique(panoptic_rgb.rgb_to_ids(pixels)).astype(np.int64)
  ids = ids[ids > 0]
  counts = np.zeros((len(ids) + 1) ** 2, np.int64)
  with pytest.raises(ValueError, match='GT PNG row 3 has invalid filter type 7'):
    _pqfast.pair_counts_png(bad, 3, good, 3, 6, 5, ids, ids, counts)
  with pytest.raises(ValueError, match='Prediction PNG row 3 has invalid filter type 7'):
    _pqfast.pair_counts_png(good, 3, bad, 3, 6, 5, ids, ids, counts)
  with pytest.raises(ValueError, match='Prediction PNG image data has 90 bytes.*needs 95'):
    _pqfast.pair_counts_png(good, 3, good[:-5], 3, 6, 5, ids, ids, counts)
  with pytest.raises(ValueError, match='needs 125'):
    _pqfast.pair_counts_png(good, 3, good, 4, 6, 5, ids, ids, counts)
  with pytest.raises(ValueError, match='too large'):
    _pqfast.pair_counts_png(good, 3, good, 3, 2**40, 2**40, ids, ids, counts)
  with pytest.raises(ValueError, match='counts has'):
    _pqfast.pair_counts_png(good, 3, good, 3, 6, 5, ids, ids, counts[1:])
  assert _pqfast.pair_counts_png(good, 3, good, 3, 6, 5, ids, ids, counts) == 0
  assert counts.reshape(len(ids) + 1, -1).trace() == 30  # Identical maps: all on the diagonal.


def test_file_evaluation_names_a_damaged_png(tmp_path):
  gt_json, gt_folder, pred_json, pred_folder = synthetic_panoptic.write_case(
      str(tmp_path), num_images=2, height=24, width=32, seed=13)
  import json
  import os
  annotation = json.load(open(pred_json))['annotations'][0]
  path = os.path.join(pred_folder, annotation['file_name'])
  rgb = panoptic_rgb.ids_to_rgb(panoptic_png.decode_panoptic_png(path))
  with open(path, 'wb') as f:
    f.write(_png_with_filters(rgb, [1] * 5 + [8] + [2] * 18))
  with pytest.raises(ValueError, match=f'Cannot decode PNG {path}: PNG row 5 has invalid filter'):
    cpe.evaluate_panoptic_files(gt_json, pred_json, gt_folder, pred_folder, workers=1)


@pytest.mark.parametrize('pixel_noise', [0.0, 0.02])
def test_file_evaluation_identical_with_and_without_extension(tmp_path, pixel_noise,
                                                              monkeypatch):
  case = synthetic_panoptic.write_case(str(tmp_path), num_images=6, height=40, width=56, seed=11,
                                       pixel_noise=pixel_noise)
  gt_json, gt_folder, pred_json, pred_folder = case
  native = cpe.evaluate_panoptic_files(gt_json, pred_json, gt_folder, pred_folder, workers=2)
  monkeypatch.setenv('KMAX_DISABLE_PQFAST', '1')
  fallback = cpe.evaluate_panoptic_files(gt_json, pred_json, gt_folder, pred_folder, workers=2)
  assert native == fallback
  reference = pq_test_utils.panopticapi_pq(gt_json, pred_json, gt_folder, pred_folder)
  assert pq_test_utils.max_difference(native, reference) == 0.0


def test_unknown_id_errors_identical_with_and_without_extension(tmp_path, monkeypatch):
  gt_json, gt_folder, pred_json, pred_folder = synthetic_panoptic.write_case(
      str(tmp_path), num_images=2, height=24, width=32, seed=12)
  import json
  import os
  annotation = json.load(open(pred_json))['annotations'][1]
  path = os.path.join(pred_folder, annotation['file_name'])
  ids = panoptic_png.decode_panoptic_png(path).copy()
  ids[3, 4] = (1 << 24) - 2  # Not in segments_info.
  with open(path, 'wb') as f:
    f.write(panoptic_rgb.encode_png(ids))
  messages = []
  for disable in ('', '1'):
    monkeypatch.setenv('KMAX_DISABLE_PQFAST', disable)
    with pytest.raises(ValueError, match=r'segment id\(s\) \[16777214\]') as error:
      cpe.evaluate_panoptic_files(gt_json, pred_json, gt_folder, pred_folder, workers=1)
    messages.append(str(error.value))
  assert messages[0] == messages[1]
