"""Align-corners resizing as DeepLab2 does it (tf.compat.v1 semantics)."""

from typing import Sequence

import numpy as np
import tensorflow as tf

from kmax_tf import backend


def resize_bilinear(images: tf.Tensor, size: Sequence[int],
                    align_corners: bool = True) -> tf.Tensor:
  """Bilinear resize of [B, H, W, C] images to [B, size[0], size[1], C].

  Same values as `tf.compat.v1.image.resize_bilinear`. For C <= 32 with
  align_corners DeepLab2 resizes each axis separately with the spatial axis on
  the channel dimension (a TPU memory trick); we keep that order of operations
  so that float rounding matches.

  Args:
    images: [B, H, W, C] tensor with static H, W, C.
    size: (height, width) output size.
    align_corners: align the corner pixels of input and output.

  Returns:
    [B, size[0], size[1], C] tensor of the input dtype.
  """
  _, height, width, channels = images.shape.as_list()
  if height == size[0] and width == size[1]:
    return images
  dtype = images.dtype
  images = tf.cast(images, tf.float32)
  if align_corners and backend.resize_by_gathers():
    images = bilinear_align_corners_by_gathers(images, size)
  elif not backend.separable_resize(channels, align_corners):
    images = tf.compat.v1.image.resize_bilinear(images, size, align_corners=align_corners)
  else:
    images = tf.transpose(images, [0, 3, 1, 2])  # [B, C, H, W]
    images = tf.compat.v1.image.resize_bilinear(
        images, [channels, size[0]], align_corners=align_corners)
    images = tf.transpose(images, [0, 1, 3, 2])  # [B, C, W, h]
    images = tf.compat.v1.image.resize_bilinear(
        images, [channels, size[1]], align_corners=align_corners)
    images = tf.transpose(images, [0, 3, 2, 1])  # [B, h, w, C]
  return tf.cast(images, dtype)


def resize_align_corners(inputs: tf.Tensor, size, method: str = 'bilinear') -> tf.Tensor:
  """`tf.compat.v1.image.resize(..., align_corners=True)` of a [B, H, W, C] tensor.

  Args:
    inputs: [B, H, W, C] tensor.
    size: (height, width), Python ints or an int32 [2] tensor.
    method: 'bilinear' or 'nearest'.

  Returns:
    [B, height, width, C] tensor (float32 for bilinear, input dtype for nearest).
  """
  methods = {
      'bilinear': tf.compat.v1.image.ResizeMethod.BILINEAR,
      'nearest': tf.compat.v1.image.ResizeMethod.NEAREST_NEIGHBOR,
  }
  if method not in methods:
    raise ValueError(f"resize method must be 'bilinear' or 'nearest', got {method!r}")
  if inputs.shape.rank != 4:
    raise ValueError(f'resize expects a [B, H, W, C] tensor, got shape {inputs.shape}')
  return tf.compat.v1.image.resize(inputs, size, method=methods[method], align_corners=True)


def _source_rows(in_size: int, out_size: int):
  """Align-corners source indices and weights, in TensorFlow's CPU kernel float32 arithmetic.

  Returns:
    (lower int32 [out], upper int32 [out], lerp float32 [out]).
  """
  scale = np.float32(in_size - 1) / np.float32(out_size - 1) if out_size > 1 else np.float32(0)
  source = np.arange(out_size, dtype=np.float32) * np.float32(scale)
  lower = np.floor(source)
  upper = np.minimum(lower.astype(np.int64) + 1, in_size - 1)
  return lower.astype(np.int32), upper.astype(np.int32), (source - lower).astype(np.float32)


def bilinear_align_corners_by_gathers(images: tf.Tensor, size: Sequence[int]) -> tf.Tensor:
  """`tf.compat.v1.image.resize_bilinear(..., align_corners=True)` from gathers and lerps.

  For XLA, which lowers ResizeBilinear to a feature-grouped convolution that
  is 6-8x slower on CPU; the gathers and the interpolation fuse into one loop.
  Same formula as TensorFlow's CPU kernel (top/bottom rows interpolated along
  the width, then along the height).

  Args:
    images: float32 [B, H, W, C] with static H, W.
    size: static (height, width).

  Returns:
    float32 [B, size[0], size[1], C].
  """
  _, height, width, _ = images.shape.as_list()
  top, bottom, y_lerp = _source_rows(height, int(size[0]))
  left, right, x_lerp = _source_rows(width, int(size[1]))
  top_rows = tf.gather(images, top, axis=1)
  bottom_rows = tf.gather(images, bottom, axis=1)
  x_lerp = tf.constant(x_lerp)[:, None]
  y_lerp = tf.constant(y_lerp)[:, None, None]

  def along_width(rows):
    row_left = tf.gather(rows, left, axis=2)
    return row_left + (tf.gather(rows, right, axis=2) - row_left) * x_lerp

  upper, lower = along_width(top_rows), along_width(bottom_rows)
  return upper + (lower - upper) * y_lerp
