"""Align-corners resizing as DeepLab2 does it (tf.compat.v1 semantics)."""

from typing import Sequence

import tensorflow as tf


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
  if channels > 32 or not align_corners:
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
