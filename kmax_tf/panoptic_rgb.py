"""The RGB encoding of panoptic / segment ids: id = R + 256 * G + 65536 * B.

COCO panoptic PNGs (annotations, our prediction writers) and the `panoptic_png`
TFRecord label format store one id per pixel this way, so an id must be in
[0, 2**24). Converters, the tf.data decoder, the PQ evaluation, the writers and
the predictor all use these functions (numpy only; no TensorFlow).

Accepted inputs (the union of what the data and evaluation sides read):
* `ids_to_rgb`: integer (or bool) ids [H, W] or [H, W, 1], each in [0, 2**24).
* `rgb_to_ids`: uint8 (or wider integer) [H, W, 3] RGB, [H, W, 4] RGBA (alpha
  ignored, as panopticapi's `rgb2id`), or [H, W] single-channel values, which
  are already ids and come back unchanged.
"""

import io

import numpy as np

# Largest id an RGB pixel can hold.
MAX_ID = 256**3 - 1


def as_id_map(ids: np.ndarray, what: str = 'id map') -> np.ndarray:
  """ids as an integer (or bool) [H, W] array ([H, W, 1] squeezed); raises otherwise."""
  ids = np.asarray(ids)
  if ids.ndim == 3 and ids.shape[-1] == 1:
    ids = ids[..., 0]
  if ids.ndim != 2:
    raise ValueError(f'Expected a {what} of shape [height, width], got {ids.shape}.')
  if ids.dtype.kind not in 'iub':
    raise ValueError(f'Expected an integer {what}, got dtype {ids.dtype}.')
  return ids


def ids_to_rgb(ids: np.ndarray) -> np.ndarray:
  """Splits ids into RGB.

  Args:
    ids: integer [H, W] (or [H, W, 1]) ids in [0, 2**24).

  Returns:
    uint8 [H, W, 3]: R = id % 256, G = (id // 256) % 256, B = id // 65536.

  Raises:
    ValueError: for another shape, a non-integer dtype, or an id out of range.
  """
  ids = as_id_map(ids)
  if ids.size and (ids.min() < 0 or ids.max() > MAX_ID):
    raise ValueError(
        f'Panoptic id range [{ids.min()}, {ids.max()}] exceeds what an RGB PNG holds: ids '
        f'must be in [0, 2**24) (for larger ids use the `raw` label format).')
  ids = ids.astype(np.uint32)
  return np.stack([ids & 255, (ids >> 8) & 255, ids >> 16], axis=-1).astype(np.uint8)


def rgb_to_ids(rgb: np.ndarray, dtype=np.int32) -> np.ndarray:
  """Inverse of `ids_to_rgb`.

  Args:
    rgb: [H, W, 3] RGB, [H, W, 4] RGBA (alpha ignored) or [H, W] (already ids),
      integer dtype.
    dtype: np.int32 (data pipeline) or np.uint32 (evaluation); ids < 2**24 fit
      both.

  Returns:
    `dtype` [H, W] ids, R + 256 * G + 65536 * B.
  """
  rgb = np.asarray(rgb)
  if dtype not in (np.int32, np.uint32):
    raise ValueError(f'dtype must be np.int32 or np.uint32, got {dtype}.')
  if rgb.ndim == 2:
    return rgb.astype(dtype)
  if rgb.ndim != 3 or rgb.shape[-1] not in (3, 4):
    raise ValueError(f'Expected RGB(A) [H, W, 3 or 4] or ids [H, W], got shape {rgb.shape}.')
  rgb = rgb.astype(dtype)
  return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def encode_png(ids: np.ndarray) -> bytes:
  """ids: integer [H, W] in [0, 2**24) -> bytes of an RGB PNG holding them."""
  from PIL import Image  # (only writers need Pillow)
  buffer = io.BytesIO()
  Image.fromarray(ids_to_rgb(ids)).save(buffer, format='PNG')
  return buffer.getvalue()
