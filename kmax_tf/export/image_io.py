"""Reading user images as RGB uint8 arrays, with clear errors.

Grayscale, palette, 16-bit and RGBA / CMYK images are converted to RGB (an
alpha channel is dropped); the EXIF orientation of photos is applied so that
predictions line up with what image viewers show.
"""

import io
import os
from typing import Union

import numpy as np
from PIL import Image
from PIL import ImageOps

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm',
                    '.pgm')

ImageLike = Union[str, os.PathLike, np.ndarray, Image.Image]


class ImageReadError(ValueError):
  """A file or array that cannot be used as an image."""


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
  image = ImageOps.exif_transpose(image)
  if image.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
    # 16/32-bit grayscale: scale the used range to 8 bits.
    values = np.asarray(image, np.float64)
    top = values.max() if values.size and values.max() > 255 else 255.0
    image = Image.fromarray(np.clip(values / top * 255.0, 0, 255).astype(np.uint8))
  if image.mode != 'RGB':
    image = image.convert('RGB')
  return np.asarray(image, np.uint8)


def read_image(path: Union[str, os.PathLike]) -> np.ndarray:
  """Reads an image file as uint8 [H, W, 3] RGB.

  Raises:
    ImageReadError: missing file, not an image, truncated or too large.
  """
  import tensorflow as tf  # tf.io.gfile: the file may be on gs:// or ram://
  path = os.fspath(path)
  if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
    raise ImageReadError(f'{path}: no such file.')
  try:
    with tf.io.gfile.GFile(path, 'rb') as f:
      data = f.read()
  except tf.errors.OpError as error:
    raise ImageReadError(f'{path}: cannot read the file ({error.message}).') from None
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      return _pil_to_rgb(image)
  except Image.DecompressionBombError as error:
    raise ImageReadError(f'{path}: image too large to decode safely ({error}).') from None
  except (OSError, SyntaxError, ValueError) as error:
    raise ImageReadError(f'{path}: not a readable image ({error}).') from None


def _check_pixel_range(array: np.ndarray, name: str) -> None:
  low, high = array.min(), array.max()
  if low < 0 or high > 255:
    raise ImageReadError(f'{name} has values in [{low:g}, {high:g}]; pixel values must lie in '
                         f'[0, 255] ({array.dtype} image; pass uint8, or scale it first).')


def to_rgb_uint8(image: ImageLike, name: str = 'image') -> np.ndarray:
  """A path, PIL image or array [H, W] / [H, W, 1|3|4] -> uint8 [H, W, 3] RGB.

  Arrays are uint8, or float / integer arrays holding values in [0, 255]
  (floats are rounded). Anything else is an ImageReadError rather than a
  silent clip or wrap-around: values outside [0, 255], and float images whose
  values all lie in [0, 1] (the [0, 1] convention; rounding would make them
  black).
  """
  if isinstance(image, (str, os.PathLike)):
    return read_image(image)
  if isinstance(image, Image.Image):
    return _pil_to_rgb(image)
  array = np.asarray(image)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim == 2:
    array = np.stack([array] * 3, axis=-1)
  if array.ndim != 3 or array.shape[-1] not in (3, 4):
    raise ImageReadError(f'{name} must be [height, width] or [height, width, 1|3|4], got shape '
                         f'{array.shape}.')
  array = array[..., :3]
  if min(array.shape[:2]) == 0:
    raise ImageReadError(f'{name} is empty (shape {array.shape}).')
  if array.dtype == np.uint8:
    return np.ascontiguousarray(array)
  if np.issubdtype(array.dtype, np.floating):
    if not np.all(np.isfinite(array)):
      raise ImageReadError(f'{name} has NaN or infinite values.')
    _check_pixel_range(array, name)
    low, high = float(array.min()), float(array.max())
    if 0.0 < high <= 1.0:
      raise ImageReadError(
          f'{name} is a {array.dtype} image with values in [{low:g}, {high:g}]: it looks '
          'scaled to [0, 1], but float images must hold [0, 255] values. Multiply by 255 '
          '(or pass uint8).')
    return np.round(array).astype(np.uint8)
  if array.dtype == bool:
    return array.astype(np.uint8)
  if np.issubdtype(array.dtype, np.integer):
    _check_pixel_range(array, name)
    return array.astype(np.uint8)
  raise ImageReadError(f'{name} has unsupported dtype {array.dtype}.')
