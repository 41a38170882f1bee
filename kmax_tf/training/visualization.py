"""Panoptic visualizations for evaluation: image | ground truth | prediction rows."""

from typing import Sequence

import numpy as np
import tensorflow as tf

from kmax_tf import file_io


def colorize_panoptic(panoptic: np.ndarray, colormap: Sequence[Sequence[int]],
                      label_divisor: int, ignore_label: int) -> np.ndarray:
  """Colors a panoptic map with the dataset colormap.

  Args:
    panoptic: int [H, W], semantic * label_divisor + instance.
    colormap: (r, g, b) per contiguous class id.
    label_divisor: panoptic label divisor.
    ignore_label: class drawn black.

  Returns:
    uint8 [H, W, 3]. Stuff and the first instance of a class use the class
    color; other instances of the class get a deterministic shade of it, so
    touching instances stay distinguishable.
  """
  panoptic = np.asarray(panoptic, np.int64)
  semantic = panoptic // label_divisor
  instance = panoptic % label_divisor
  palette = np.asarray(colormap, np.int64).reshape(-1, 3)
  valid = (semantic >= 0) & (semantic < len(palette)) & (semantic != ignore_label)
  colors = np.zeros(panoptic.shape + (3,), np.int64)
  colors[valid] = palette[semantic[valid]]
  # Instance shading: a fixed pseudo-random offset in [-60, 60] per instance id.
  shade = ((instance * 2654435761) % 121 - 60)[..., None]
  shaded = valid & (instance > 1)
  colors[shaded] = colors[shaded] + shade[shaded]
  return np.clip(colors, 0, 255).astype(np.uint8)


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image, np.float32)
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


def prediction_row(image, gt_panoptic, pred_panoptic, colormap, label_divisor,
                   ignore_label, separator: int = 4) -> np.ndarray:
  """uint8 [H, 3W + 2*separator, 3]: image | colored ground truth | colored prediction."""
  image = _as_rgb_uint8(image)
  height, width = image.shape[:2]
  gt = colorize_panoptic(gt_panoptic, colormap, label_divisor, ignore_label)
  pred = colorize_panoptic(pred_panoptic, colormap, label_divisor, ignore_label)
  for name, part in (('ground truth', gt), ('prediction', pred)):
    if part.shape[:2] != (height, width):
      raise ValueError(f'{name} is {part.shape[:2]}, the image {(height, width)}.')
  gap = np.full((height, separator, 3), 255, np.uint8)
  return np.concatenate([image, gap, gt, gap, pred], axis=1)


def stack_rows(rows: Sequence[np.ndarray], separator: int = 4) -> np.ndarray:
  """Stacks rows vertically (padding narrower rows with white)."""
  width = max(row.shape[1] for row in rows)
  padded = []
  for index, row in enumerate(rows):
    if row.shape[1] < width:
      row = np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)), constant_values=255)
    padded.append(row)
    if index + 1 < len(rows):
      padded.append(np.full((separator, width, 3), 255, np.uint8))
  return np.concatenate(padded, axis=0)


def write_png_atomic(path: str, image: np.ndarray) -> None:
  """Writes uint8 [H, W, 3] as PNG atomically (replacing an older picture)."""
  data = tf.io.encode_png(tf.constant(image, tf.uint8)).numpy()
  file_io.write_bytes_atomic(path, data, overwrite=True)
