"""Panoptic visualizations for evaluation: image | ground truth | prediction rows."""

from typing import Sequence

import numpy as np
import tensorflow as tf

from kmax_tf import coloring
from kmax_tf import file_io


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image, np.float32)
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


def prediction_row(image, gt_panoptic, pred_panoptic, colormap, label_divisor,
                   ignore_label, separator: int = 4) -> np.ndarray:
  """uint8 [H, 3W + 2*separator, 3]: image | colored ground truth | colored prediction."""
  image = _as_rgb_uint8(image)
  height, width = image.shape[:2]
  gt = coloring.colorize_panoptic(gt_panoptic, colormap, label_divisor, ignore_label)
  pred = coloring.colorize_panoptic(pred_panoptic, colormap, label_divisor, ignore_label)
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
