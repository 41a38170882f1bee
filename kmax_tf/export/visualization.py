"""Overlay pictures of panoptic predictions: colors, boundaries and a legend.

The picture is the photo blended with the dataset colormap (instances of one
class in shades of its color, as in training pictures), white lines on the
boundaries between segments, and below it a legend of the categories present
(color swatch, name and, for thing classes, the number of instances in
parentheses).
"""

from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from kmax_tf import coloring

BOUNDARY_COLOR = (255, 255, 255)
_LEGEND_BACKGROUND = (255, 255, 255)
_TEXT_COLOR = (0, 0, 0)


def segment_boundaries(panoptic: np.ndarray) -> np.ndarray:
  """bool [H, W]: pixels whose right or lower neighbour has another panoptic id."""
  panoptic = np.asarray(panoptic)
  boundary = np.zeros(panoptic.shape, bool)
  horizontal = panoptic[:, 1:] != panoptic[:, :-1]
  vertical = panoptic[1:, :] != panoptic[:-1, :]
  boundary[:, :-1] |= horizontal
  boundary[:, 1:] |= horizontal
  boundary[:-1, :] |= vertical
  boundary[1:, :] |= vertical
  return boundary


def legend_entries(panoptic: np.ndarray, label_divisor: int, ignore_label: int,
                   class_names: Sequence[str], thing_class_ids: Sequence[int]
                   ) -> List[Tuple[int, str]]:
  """(class id, text) of the classes present, largest area first."""
  panoptic = np.asarray(panoptic, np.int64)
  labels, areas = np.unique(panoptic, return_counts=True)
  class_area: Dict[int, int] = {}
  class_instances: Dict[int, int] = {}
  for label, area in zip(labels.tolist(), areas.tolist()):
    class_id = label // label_divisor
    if class_id == ignore_label or not 0 <= class_id < len(class_names):
      continue
    class_area[class_id] = class_area.get(class_id, 0) + area
    class_instances[class_id] = class_instances.get(class_id, 0) + 1
  things = set(thing_class_ids)
  entries = []
  for class_id in sorted(class_area, key=lambda c: (-class_area[c], c)):
    text = str(class_names[class_id])
    if class_id in things:
      text += f' ({class_instances[class_id]})'
    entries.append((class_id, text))
  return entries


def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow built without FreeType: fixed bitmap font.
    return ImageFont.load_default()


def _draw_legend(width: int, entries: List[Tuple[int, str]], colormap: Sequence[Sequence[int]]
                 ) -> np.ndarray:
  """uint8 [h, width, 3] legend panel, entries flowing left to right in rows."""
  font_size = int(np.clip(width // 40, 13, 28))
  font = _font(font_size)
  swatch = font_size
  padding = max(4, font_size // 2)
  row_height = swatch + padding
  texts = entries or [(None, 'no segments')]
  probe = ImageDraw.Draw(Image.new('RGB', (1, 1)))
  positions = []
  x, y = padding, padding
  for class_id, text in texts:
    text_width = int(probe.textlength(text, font=font))
    item_width = (swatch + padding // 2 if class_id is not None else 0) + text_width + 2 * padding
    if x > padding and x + item_width > width:
      x, y = padding, y + row_height
    positions.append((x, y))
    x += item_width
  panel = Image.new('RGB', (width, y + row_height + padding), _LEGEND_BACKGROUND)
  draw = ImageDraw.Draw(panel)
  for (class_id, text), (x, y) in zip(texts, positions):
    if class_id is not None:
      color = tuple(int(c) for c in colormap[class_id])
      draw.rectangle([x, y, x + swatch - 1, y + swatch - 1], fill=color, outline=(0, 0, 0))
      x += swatch + padding // 2
    draw.text((x, y + swatch / 2), text, fill=_TEXT_COLOR, font=font, anchor='lm')
  return np.asarray(panel, np.uint8)


def overlay_panoptic(image: np.ndarray, panoptic: np.ndarray, *,
                     colormap: Sequence[Sequence[int]], class_names: Sequence[str],
                     thing_class_ids: Sequence[int], label_divisor: int, ignore_label: int,
                     alpha: float = 0.55, legend: bool = True) -> np.ndarray:
  """Colorized overlay of a panoptic map on its image.

  Args:
    image: uint8 [H, W, 3] RGB.
    panoptic: int [H, W], class_id * label_divisor + instance id.
    colormap: (r, g, b) per class id.
    class_names: name per class id.
    thing_class_ids: classes with instances.
    label_divisor: panoptic label divisor.
    ignore_label: void class (left uncolored).
    alpha: opacity of the colors.
    legend: append the legend panel below the picture.

  Returns:
    uint8 [H + legend height, W, 3].
  """
  image = np.asarray(image)
  panoptic = np.asarray(panoptic)
  if image.ndim != 3 or image.shape[-1] != 3 or image.shape[:2] != panoptic.shape:
    raise ValueError(f'image {image.shape} must be [H, W, 3] with the panoptic map\'s size '
                     f'{panoptic.shape}.')
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f'alpha must be in [0, 1], got {alpha}.')
  colors = coloring.colorize_panoptic(panoptic, colormap, label_divisor,
                                                    ignore_label).astype(np.float32)
  classes = np.asarray(panoptic, np.int64) // label_divisor
  colored = (classes != ignore_label)[..., None]
  blended = np.where(colored, (1.0 - alpha) * image + alpha * colors, image)
  blended = np.clip(np.round(blended), 0, 255).astype(np.uint8)
  blended[segment_boundaries(panoptic)] = BOUNDARY_COLOR
  if not legend:
    return blended
  entries = legend_entries(panoptic, label_divisor, ignore_label, class_names, thing_class_ids)
  return np.concatenate([blended, _draw_legend(image.shape[1], entries, colormap)], axis=0)


def overlay_from_metadata(image: np.ndarray, panoptic: np.ndarray, metadata: Dict,
                          alpha: float = 0.55) -> np.ndarray:
  """`overlay_panoptic` with the dataset facts of an export's metadata."""
  return overlay_panoptic(
      image, panoptic, colormap=metadata['colormap'], class_names=metadata['class_names'],
      thing_class_ids=metadata['thing_class_ids'],
      label_divisor=metadata['panoptic_label_divisor'], ignore_label=metadata['ignore_label'],
      alpha=alpha)
