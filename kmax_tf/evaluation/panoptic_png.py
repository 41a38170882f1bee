"""Fast decoding of COCO panoptic PNGs into segment-id maps.

A COCO panoptic PNG stores segment id = R + 256 * G + 256**2 * B
(`kmax_tf.panoptic_rgb`). Evaluating PQ on a dataset is bound by PNG decoding,
and most of that time is zlib's inflate. With the optional C extension
`_pqfast` (built by setup.py when a compiler is present) the decode is split in
two:

1. inflate the IDAT stream with libdeflate (about 10x faster than zlib), found
   through ctypes when the system has it (Debian's `libdeflate0`), else zlib;
2. undo the PNG row filters straight into the id map (8-bit grey, RGB or RGBA)
   in the extension.

`inflate_for_native` stops after step 1, for the extension's fused decode +
pair counting used by the file evaluation.

Without the extension, and for anything unusual (palette, 16 bit, interlace,
damaged data), the PNG is read with plain `PIL.Image.open`, which reads every
PNG the official panopticapi reads, with the same id rule (`rgb2id`). Only
public APIs of Pillow, zlib and ctypes are used. Setting the environment
variable KMAX_DISABLE_PQFAST=1 turns the C extension off (results are
identical either way; the tests compare both).
"""

import ctypes
import ctypes.util
import io
import os
import struct
import threading
import zlib
from typing import Optional, Union

import numpy as np

from kmax_tf import panoptic_rgb

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# Deflate expands at most ~1032x (258-byte matches coded in 2 bits).
MAX_DEFLATE_RATIO = 1040

# PNG color type -> bytes per pixel, for the 8-bit types the C extension reads.
_NATIVE_CHANNELS = {0: 1, 2: 3, 6: 4}

# `_FastDecoder.decode`'s default: unfilter with `native_module()`.
_ACTIVE_EXTENSION = object()

try:
  from kmax_tf.evaluation import _pqfast
except ImportError:  # Not built (no compiler at install time): pure Python path.
  _pqfast = None
if _pqfast is not None and not all(
    hasattr(_pqfast, name) for name in ('unfilter_ids', 'pair_counts', 'pair_counts_png')):
  _pqfast = None  # A stale build from an older checkout: rebuild with `pip install -e .`.


def native_module():
  """The `_pqfast` C extension, or None if it is not built or KMAX_DISABLE_PQFAST is set."""
  if _pqfast is None or os.environ.get('KMAX_DISABLE_PQFAST', '') not in ('', '0'):
    return None
  return _pqfast


def _load_libdeflate():
  """The libdeflate decompressor through ctypes, or None where unavailable."""
  if os.environ.get('KMAX_DISABLE_LIBDEFLATE'):
    return None
  for name in ('libdeflate.so.0', 'libdeflate.so', None):
    if name is None:  # Slower (runs ldconfig): only when the usual names fail.
      name = ctypes.util.find_library('deflate')
      if not name:
        break
    try:
      lib = ctypes.CDLL(name)
      lib.libdeflate_alloc_decompressor.restype = ctypes.c_void_p
      lib.libdeflate_alloc_decompressor.argtypes = []
      lib.libdeflate_free_decompressor.restype = None
      lib.libdeflate_free_decompressor.argtypes = [ctypes.c_void_p]
      lib.libdeflate_zlib_decompress.restype = ctypes.c_int
      lib.libdeflate_zlib_decompress.argtypes = [
          ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p,
          ctypes.c_size_t, ctypes.c_void_p]
      return lib
    except (OSError, AttributeError):
      continue
  return None


class _Decompressor:
  """Owns one libdeflate decompressor; freed with its thread's local data."""

  def __init__(self, lib):
    self._lib = lib
    self.handle = lib.libdeflate_alloc_decompressor()
    if not self.handle:
      raise OSError('libdeflate_alloc_decompressor failed')

  def __del__(self):
    if getattr(self, 'handle', None):
      self._lib.libdeflate_free_decompressor(self.handle)
      self.handle = None


class _FastDecoder:
  """libdeflate (or zlib) inflate + the C extension's row unfiltering.

  A libdeflate decompressor is not thread-safe: each thread gets its own.
  """

  def __init__(self, lib):
    self._lib = lib
    self._local = threading.local()

  def _decompressor(self):
    decompressor = getattr(self._local, 'decompressor', None)
    if decompressor is None:
      decompressor = _Decompressor(self._lib)
      self._local.decompressor = decompressor
    return decompressor.handle

  def _scratch(self, size: int, slot: str = 'scratch') -> np.ndarray:
    scratch = getattr(self._local, slot, None)
    if scratch is None or scratch.size < size:
      scratch = np.empty(size, np.uint8)
      setattr(self._local, slot, scratch)
    return scratch[:size]

  def _parse(self, data: bytes):
    """(width, height, color_type, IDAT stream) of a plain 8-bit PNG, else None."""
    if data[:8] != _PNG_SIGNATURE:
      return None
    pos = 8
    idat = []
    header = None
    length_total = len(data)
    while pos + 8 <= length_total:
      (length,) = struct.unpack_from('>I', data, pos)
      chunk_type = data[pos + 4:pos + 8]
      if chunk_type == b'IHDR':
        if length != 13 or pos + 21 > length_total:
          return None
        header = struct.unpack_from('>IIBBBBB', data, pos + 8)
      elif chunk_type == b'IDAT':
        idat.append(data[pos + 8:pos + 8 + length])
      elif chunk_type == b'IEND':
        break
      pos += 12 + length
    if header is None or not idat:
      return None
    width, height, bit_depth, color_type, compression, filter_method, interlace = header
    if (bit_depth != 8 or interlace != 0 or compression != 0 or filter_method != 0 or
        width == 0 or height == 0):
      return None
    return width, height, color_type, idat[0] if len(idat) == 1 else b''.join(idat)

  def _inflate_native(self, stream: bytes, width: int, height: int, channels: int, slot: str):
    """The inflated (still filtered) rows for the C extension, or None."""
    raw_size = height * (1 + channels * width)
    if raw_size > MAX_DEFLATE_RATIO * len(stream) + 1024:
      return None  # Damaged header or data: no buffer of that size; Pillow reports it.
    if self._lib is None:
      try:
        raw = zlib.decompress(stream)
      except zlib.error:
        return None  # Pillow reports the damage.
      return raw if len(raw) == raw_size else None
    raw = self._scratch(raw_size, slot)
    return raw if self._inflate(stream, raw) else None

  def inflate_for_native(self, data: bytes, slot: str):
    """(raw rows, width, height, channels) for `_pqfast`, or None if unsupported/damaged.

    `slot` names the per-thread buffer the rows go to (valid until the next
    call with the same slot in this thread).
    """
    parsed = self._parse(data)
    if parsed is None or parsed[2] not in _NATIVE_CHANNELS:
      return None
    width, height, color_type, stream = parsed
    channels = _NATIVE_CHANNELS[color_type]
    raw = self._inflate_native(stream, width, height, channels, slot)
    return None if raw is None else (raw, width, height, channels)

  def decode(self, data: bytes, out: Optional[np.ndarray] = None,
             native=_ACTIVE_EXTENSION) -> Optional[np.ndarray]:
    """uint32 [H, W] ids (in `out` if given), or None if the generic path is needed.

    `native`: the `_pqfast` module to unfilter with (default: `native_module()`);
    None always defers to the generic path.
    """
    if native is _ACTIVE_EXTENSION:
      native = native_module()
    if native is None:
      return None
    parsed = self._parse(data)
    if parsed is None or parsed[2] not in _NATIVE_CHANNELS:
      return None
    width, height, color_type, stream = parsed
    channels = _NATIVE_CHANNELS[color_type]
    raw = self._inflate_native(stream, width, height, channels, 'scratch')
    if raw is None:
      return None
    ids = _output(out, height, width)
    native.unfilter_ids(raw, width, height, channels, ids)
    return ids

  def _inflate(self, stream: bytes, raw: np.ndarray) -> bool:
    """Inflates the zlib `stream` into `raw`; True if it fills `raw` exactly."""
    actual = ctypes.c_size_t(0)
    status = self._lib.libdeflate_zlib_decompress(
        self._decompressor(), stream, len(stream), raw.ctypes.data, raw.size,
        ctypes.byref(actual))
    return status == 0 and actual.value == raw.size


def _output(out: Optional[np.ndarray], height: int, width: int) -> np.ndarray:
  """A uint32 [H, W] array: a view of `out`'s first H * W entries, or new."""
  if out is None:
    return np.empty((height, width), np.uint32)
  if out.dtype != np.uint32 or out.ndim != 1 or out.size < height * width:
    raise ValueError(f'out must be a 1-D uint32 array of at least {height * width} entries, '
                     f'got {out.dtype} {out.shape}.')
  return out[:height * width].reshape(height, width)


def _make_fast_decoder() -> Optional[_FastDecoder]:
  if _pqfast is None:
    return None
  return _FastDecoder(_load_libdeflate())  # Without libdeflate, zlib inflates.


_fast_decoder = None
_fast_decoder_ready = False


def fast_decoding_available() -> bool:
  """True if the fast path (the C extension, with libdeflate or zlib) is in use now."""
  return _get_fast_decoder() is not None


def _get_fast_decoder() -> Optional[_FastDecoder]:
  """The process's decoder, or None while the C extension is unavailable or disabled."""
  global _fast_decoder, _fast_decoder_ready
  if not _fast_decoder_ready:
    _fast_decoder = _make_fast_decoder()
    _fast_decoder_ready = True
  return _fast_decoder if native_module() is not None else None


def inflate_for_native(data: bytes, slot: str):
  """Inflates a PNG for the C extension's row decoders (`_pqfast`).

  Args:
    data: the PNG file's bytes.
    slot: name of the per-thread buffer receiving the rows; they stay valid
      until the next call with the same slot in the same thread.

  Returns:
    (raw rows: uint8 buffer of H * (1 + W * C) bytes, W, H, C), or None if
    the extension is off or the PNG is not plain 8-bit grey/RGB/RGBA or is
    damaged (then `decode_panoptic_png` gives the ids or the error).
  """
  decoder = _get_fast_decoder()
  if decoder is None or native_module() is None:
    return None
  return decoder.inflate_for_native(data, slot)


def decode_panoptic_png(source: Union[str, bytes, os.PathLike],
                        out: Optional[np.ndarray] = None) -> np.ndarray:
  """Reads a COCO panoptic PNG.

  Args:
    source: a file path, or the PNG file's bytes.
    out: optional 1-D uint32 buffer to decode into (reused across calls to
      save allocations); the result is then a view of it.

  Returns:
    uint32 [H, W] segment ids, R + 256 * G + 256**2 * B as panopticapi's
    `rgb2id` (a single-channel PNG gives its values unchanged).
  """
  if isinstance(source, (bytes, bytearray, memoryview)):
    data = bytes(source)
  else:
    with open(source, 'rb') as f:
      data = f.read()
  decoder = _get_fast_decoder()
  if decoder is not None:
    ids = decoder.decode(data, out)
    if ids is not None:
      return ids
  from PIL import Image  # (the C extension path never needs Pillow)
  try:
    with Image.open(io.BytesIO(data)) as image:
      if image.mode == 'RGB':
        # Packed as RGBX, a pixel is the little-endian uint32 id + 2**24 * X.
        packed = np.frombuffer(image.tobytes('raw', 'RGBX'), '<u4')
        ids = _output(out, image.height, image.width)
        np.bitwise_and(packed.reshape(ids.shape), 0xFFFFFF, out=ids)
        return ids
      ids = panoptic_rgb.rgb_to_ids(np.array(image, dtype=np.uint32), np.uint32)
  except OSError as error:  # PIL's UnidentifiedImageError, truncated data, ...
    # PIL names its in-memory buffer; name the file (or the data) instead.
    what = os.fspath(source) if not isinstance(source, (bytes, bytearray, memoryview)) else (
        f'{len(data)} bytes of data')
    reason = str(error).replace(' <_io.BytesIO', '').split(' object at')[0]
    raise ValueError(f'{what} is not a readable PNG image ({reason.strip()}).') from None
  if out is None:
    return ids
  result = _output(out, *ids.shape)
  result[...] = ids
  return result

