"""Colours of panoptic maps, shared by training pictures and prediction overlays."""

from typing import Sequence

import numpy as np


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
