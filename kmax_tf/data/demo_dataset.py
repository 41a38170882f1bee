r"""A small synthetic panoptic dataset that a tiny kMaX model learns in minutes on a CPU.

Scenes are rendered procedurally: a textured sky / grass / sand background (stuff), shaded discs,
boxes and triangles (things, possibly overlapping, outlined so that touching instances of one class
stay separable), sometimes a crowd of small discs (`iscrowd`), and sometimes an unlabeled grey rock
(void). Every image is generated from (seed, split, index) alone, so output is byte-identical for
a seed and a split does not change when the other split's size does.

Output in `--output_dir`:
  <split>-%05d-of-%05d.tfrecord       DeepLab2-format shards (raw int32 labels, crowd -> void).
  kmax_demo_panoptic.json             the dataset descriptor (split sizes of this run).
  coco_format/<split>/*.png           images of the --coco_format_splits (default val), and
  coco_format/annotations/panoptic_<split>.json + panoptic_<split>/*.png: their COCO-panoptic
                                      labels, for the official PQ tool.

Usage:
  python -m kmax_tf.data.demo_dataset --output_dir=DIR [--num_train=300 --num_val=60
      --size=129,129 --seed=0 --preview=grid.png]
"""

import argparse
import dataclasses
import functools
import io
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from PIL import Image

from kmax_tf import file_io
from kmax_tf.data import converter_utils
from kmax_tf.data import label_codec

DATASET_NAME = 'kmax_demo_panoptic'
DEFAULT_NUM_TRAIN = 300
DEFAULT_NUM_VAL = 60
DEFAULT_SIZE = (129, 129)
DEFAULT_SEED = 0

VOID, DISC, BOX, TRIANGLE, SKY, GRASS, SAND = range(7)
CLASS_NAMES = ('void', 'disc', 'box', 'triangle', 'sky', 'grass', 'sand')
COLORMAP = ((0, 0, 0), (220, 40, 40), (40, 70, 200), (170, 60, 190), (120, 190, 240),
            (60, 160, 60), (210, 180, 120))
THING_CLASSES = (DISC, BOX, TRIANGLE)
LABEL_DIVISOR = 256
IGNORE_LABEL = VOID
_SPLIT_CODES = {'train': 1, 'val': 2}

# Base RGB colour of each class in the rendered image (labels use COLORMAP).
_BASE_COLOR = {
    DISC: (200, 50, 35), BOX: (45, 80, 190), TRIANGLE: (165, 55, 185),
    SKY: (125, 175, 235), GRASS: (70, 140, 55), SAND: (200, 175, 125),
}


def descriptor_dict(num_train: int = DEFAULT_NUM_TRAIN,
                    num_val: int = DEFAULT_NUM_VAL) -> Dict[str, Any]:
  """The DatasetDescriptor fields of the demo dataset (JSON-ready)."""
  return {
      'name': DATASET_NAME,
      'num_classes': len(CLASS_NAMES),
      'ignore_label': IGNORE_LABEL,
      'panoptic_label_divisor': LABEL_DIVISOR,
      'class_has_instances_list': list(THING_CLASSES),
      'class_names': list(CLASS_NAMES),
      'colormap': [list(c) for c in COLORMAP],
      'splits_to_sizes': {'train': num_train, 'val': num_val},
      'dataset_category_ids': None,
      'num_mask_slots': 32,
      'high_resolution_output_stride': 4,
      'use_auxiliary_semantic_decoder': True,
      'transformer_decoder_drop_path_keep_prob': 1.0,
  }


def label_spec(treat_crowd_as_ignore: bool = True) -> converter_utils.PanopticLabelSpec:
  return converter_utils.PanopticLabelSpec(
      category_to_class={c: c for c in range(1, len(CLASS_NAMES))},
      thing_class_ids=frozenset(THING_CLASSES), label_divisor=LABEL_DIVISOR,
      ignore_label=IGNORE_LABEL, treat_crowd_as_ignore=treat_crowd_as_ignore)


@dataclasses.dataclass
class Scene:
  """One rendered sample in COCO-panoptic form.

  Attributes:
    image: uint8 [H, W, 3], RGB.
    segment_ids: int32 [H, W], COCO-panoptic segment ids (0 = unlabeled).
    segments: COCO `segments_info` (id, category_id, iscrowd, area, bbox).
  """
  image: np.ndarray
  segment_ids: np.ndarray
  segments: List[Dict[str, Any]]


# ---------------------------------------------------------------------------------------------
# Rendering helpers.


def _smooth_noise(rng: np.random.Generator, shape: Tuple[int, int], cells: Tuple[int, int]):
  """Value noise in [-1, 1]: a random (cells) grid, bicubically upsampled to `shape`."""
  grid = rng.uniform(-1.0, 1.0, size=cells).astype(np.float32)
  upsampled = Image.fromarray(grid, mode='F').resize((shape[1], shape[0]), Image.BICUBIC)
  return np.clip(np.asarray(upsampled, dtype=np.float32), -1.0, 1.0)


def _wavy_boundary(rng: np.random.Generator, length: int, mean: float, amplitude: float):
  positions = np.arange(length, dtype=np.float32)
  wave = np.zeros(length, np.float32)
  for _ in range(2):
    period = rng.uniform(0.6, 2.0) * length
    wave += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * positions / period + rng.uniform(0, 6.3))
  return mean + amplitude * wave / 2.0


def _stuff_texture(rng, stuff_class: int, shape, yy, xx) -> np.ndarray:
  """float32 [H, W, 3] texture of a stuff class."""
  height, width = shape
  base = np.array(_BASE_COLOR[stuff_class], np.float32) * rng.uniform(0.85, 1.15, size=3)
  if stuff_class == SKY:
    gradient = (1.0 - yy / height)[..., None] * np.array([-25, -15, 10], np.float32)
    clouds = np.clip(_smooth_noise(rng, shape, (4, 6)), 0, 1)[..., None] * 90.0
    texture = base + gradient + clouds
  elif stuff_class == GRASS:
    blades = _smooth_noise(rng, shape, (3, width // 2))[..., None] * 28.0
    patches = _smooth_noise(rng, shape, (5, 5))[..., None] * 20.0
    texture = base + blades + patches * np.array([0.6, 1.0, 0.4], np.float32)
  else:  # SAND
    ripples = np.sin(yy * rng.uniform(0.5, 0.9) + 3 * _smooth_noise(rng, shape, (4, 4)))
    texture = base + ripples[..., None] * 14.0 + rng.normal(0, 9, size=shape + (1,))
  return texture.astype(np.float32)


def _convex_polygon_mask(vertices: np.ndarray, yy, xx) -> np.ndarray:
  """Pixels inside a convex polygon (vertices [N, 2] as (x, y), any orientation)."""
  inside_ccw = np.ones(yy.shape, bool)
  inside_cw = np.ones(yy.shape, bool)
  for i in range(len(vertices)):
    (x0, y0), (x1, y1) = vertices[i], vertices[(i + 1) % len(vertices)]
    cross = (x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0)
    inside_ccw &= cross >= 0
    inside_cw &= cross <= 0
  return inside_ccw | inside_cw


def _shape_mask_and_shading(rng, thing_class: int, center, radius, yy, xx):
  """(mask bool [H, W], shading float32 [H, W] around 1) of one thing."""
  cx, cy = center
  if thing_class == DISC:
    aspect = rng.uniform(0.8, 1.25)
    dx, dy = (xx - cx) / radius, (yy - cy) / (radius * aspect)
    dist2 = dx * dx + dy * dy
    mask = dist2 <= 1.0
    # Sphere lit from the upper left.
    normal_z = np.sqrt(np.clip(1.0 - dist2, 0.0, 1.0))
    shading = 0.45 + 0.65 * np.clip(0.55 * normal_z - 0.45 * dx - 0.45 * dy + 0.2, 0.0, 1.2)
    return mask, shading.astype(np.float32)
  angle = rng.uniform(0, 2 * np.pi)
  if thing_class == BOX:
    half_w, half_h = radius * rng.uniform(0.7, 1.0), radius * rng.uniform(0.6, 1.0)
    corners = np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h],
                        [-half_w, half_h]])
  else:  # TRIANGLE
    corners = np.array([[radius * np.cos(a), radius * np.sin(a)]
                        for a in (0.0, 2 * np.pi / 3, 4 * np.pi / 3)]) * rng.uniform(1.05, 1.3)
  rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  vertices = corners @ rotation.T + np.array([cx, cy])
  mask = _convex_polygon_mask(vertices, yy, xx)
  light = np.array([np.cos(angle + 0.8), np.sin(angle + 0.8)])
  ramp = ((xx - cx) * light[0] + (yy - cy) * light[1]) / max(radius, 1.0)
  return mask, (1.0 + 0.25 * np.clip(ramp, -1.5, 1.5)).astype(np.float32)


def _outline(mask: np.ndarray) -> np.ndarray:
  """Pixels of `mask` with a 4-neighbour outside it."""
  padded = np.pad(mask, 1, constant_values=False)
  interior = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
  return mask & ~interior


def _bbox(mask: np.ndarray) -> List[int]:
  ys, xs = np.nonzero(mask)
  return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
          int(ys.max() - ys.min() + 1)]


def render_scene(seed: int, split: str, index: int,
                 size: Tuple[int, int] = DEFAULT_SIZE) -> Scene:
  """Renders sample `index` of `split`; a pure function of its arguments."""
  height, width = size
  rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  shape = (height, width)
  scale = min(height, width) / 129.0

  # Stuff: sky above a wavy horizon; below it grass, sand, or both split by a second boundary.
  stuff = np.full(shape, SKY, np.int32)
  horizon = _wavy_boundary(rng, width, rng.uniform(0.25, 0.5) * height, 0.08 * height)
  below = yy >= horizon[None, :]
  layout = rng.integers(3)
  if layout == 0:
    stuff[below] = GRASS
  elif layout == 1:
    stuff[below] = SAND
  else:
    split_line = _wavy_boundary(rng, height, rng.uniform(0.3, 0.7) * width, 0.1 * width)
    left_class, right_class = (GRASS, SAND) if rng.random() < 0.5 else (SAND, GRASS)
    stuff[below] = np.where(xx >= split_line[:, None], right_class, left_class)[below]
  image = np.zeros(shape + (3,), np.float32)
  for stuff_class in (SKY, GRASS, SAND):
    region = stuff == stuff_class
    if region.any():
      image[region] = _stuff_texture(rng, stuff_class, shape, yy, xx)[region]

  segment_ids = np.zeros(shape, np.int32)
  segments: List[Dict[str, Any]] = []
  next_id = [1]

  def new_segment_id(category):
    segment_id = category * 1000 + next_id[0]
    next_id[0] += 1
    return segment_id

  stuff_segment = {}
  for stuff_class in (SKY, GRASS, SAND):
    if (stuff == stuff_class).any():
      stuff_segment[stuff_class] = new_segment_id(stuff_class)
      segment_ids[stuff == stuff_class] = stuff_segment[stuff_class]

  # Void: an unlabeled grey rock, partly covered by things drawn later.
  if rng.random() < 0.5:
    rock_center = (rng.uniform(0.1, 0.9) * width, rng.uniform(0.55, 0.95) * height)
    rock_radius = rng.uniform(7, 14) * scale
    rock_noise = _smooth_noise(rng, shape, (6, 6))
    dist = np.hypot(xx - rock_center[0], (yy - rock_center[1]) * 1.4) / rock_radius
    rock = dist + 0.35 * rock_noise <= 1.0
    grey = 115 + 35 * rock_noise + rng.normal(0, 10, size=shape)
    image[rock] = np.stack([grey, grey, grey * 1.05], -1)[rock]
    segment_ids[rock] = 0

  # Things, drawn back to front; a placement is rejected if it would hide most of an earlier one.
  things = []  # (segment id, class, full area)
  num_things = int(rng.integers(2, 6))
  for _ in range(num_things):
    for _attempt in range(15):
      thing_class = int(rng.choice(THING_CLASSES))
      radius = rng.uniform(10, 22) * scale
      center = (rng.uniform(radius * 0.6, width - radius * 0.6),
                rng.uniform(max(radius * 0.6, 0.2 * height), height - radius * 0.6))
      mask, shading = _shape_mask_and_shading(rng, thing_class, center, radius, yy, xx)
      if mask.sum() < 60 * scale * scale:
        continue
      keeps_others = all(
          np.count_nonzero((segment_ids == sid) & ~mask) >= max(0.6 * area, 60 * scale * scale)
          for sid, _, area in things)
      if keeps_others:
        break
    else:
      continue
    colour = np.array(_BASE_COLOR[thing_class], np.float32) * rng.uniform(0.75, 1.2)
    colour = colour + rng.uniform(-20, 20, size=3)
    texture = _smooth_noise(rng, shape, (5, 5))[..., None] * 12.0
    rendered = colour[None, None, :] * shading[..., None] + texture
    rendered[_outline(mask)] *= 0.45
    image[mask] = rendered[mask]
    segment_id = new_segment_id(thing_class)
    segment_ids[mask] = segment_id
    things.append((segment_id, thing_class, int(mask.sum())))

  # Crowd: a tight cluster of small discs, labeled as one iscrowd disc segment.
  crowd_id = None
  if rng.random() < 0.3:
    cluster_center = (rng.uniform(0.2, 0.8) * width, rng.uniform(0.3, 0.85) * height)
    crowd = np.zeros(shape, bool)
    for _ in range(int(rng.integers(5, 9))):
      offset = rng.normal(0, 6 * scale, size=2)
      small_center = (cluster_center[0] + offset[0], cluster_center[1] + offset[1])
      small_mask, small_shading = _shape_mask_and_shading(
          rng, DISC, small_center, rng.uniform(3, 5) * scale, yy, xx)
      colour = np.array(_BASE_COLOR[DISC], np.float32) * rng.uniform(0.7, 1.2)
      rendered = colour[None, None, :] * small_shading[..., None]
      rendered[_outline(small_mask)] *= 0.5
      image[small_mask] = rendered[small_mask]
      crowd |= small_mask
    if crowd.any():
      crowd_id = new_segment_id(DISC)
      segment_ids[crowd] = crowd_id

  # Global illumination and sensor noise.
  image = image * rng.uniform(0.85, 1.1) + rng.normal(0, 4, size=image.shape)
  image = np.clip(np.round(image), 0, 255).astype(np.uint8)

  for stuff_class, segment_id in stuff_segment.items():
    _append_segment(segments, segment_ids, segment_id, stuff_class, iscrowd=0)
  for segment_id, thing_class, _ in things:
    _append_segment(segments, segment_ids, segment_id, thing_class, iscrowd=0)
  if crowd_id is not None:
    _append_segment(segments, segment_ids, crowd_id, DISC, iscrowd=1)
  return Scene(image=image, segment_ids=segment_ids, segments=segments)


def _append_segment(segments, segment_ids, segment_id, category_id, iscrowd):
  mask = segment_ids == segment_id
  area = int(mask.sum())
  if area:  # Fully covered segments are dropped, as COCO has no empty segments.
    segments.append({'id': int(segment_id), 'category_id': int(category_id),
                     'iscrowd': int(iscrowd), 'area': area, 'bbox': _bbox(mask)})


# ---------------------------------------------------------------------------------------------
# Writing.


def _png_bytes(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='PNG')
  return buffer.getvalue()


# `generate` refuses an output folder that already holds a dataset, unless asked to
# overwrite it; single files are then replaced.
_replace_file = functools.partial(file_io.write_bytes_atomic, overwrite=True)
_COCO_FOLDER = 'coco_format'


def sample_name(split: str, index: int) -> str:
  return f'demo_{split}_{index:05d}'


def colorize_panoptic(panoptic: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3]: class colour, instances of a class brightened / darkened in turn."""
  semantic, instance = panoptic // LABEL_DIVISOR, panoptic % LABEL_DIVISOR
  colours = np.asarray(COLORMAP, np.float32)[np.clip(semantic, 0, len(COLORMAP) - 1)]
  factor = np.where(instance > 0, 0.55 + 0.45 * ((instance * 3) % 4) / 3.0, 1.0)
  return np.clip(colours * factor[..., None], 0, 255).astype(np.uint8)


def save_preview(path: str, scenes: Sequence[Scene], columns: int = 6):
  """Writes a PNG grid: each scene's image above its colorized (DeepLab2-converted) label."""
  spec = label_spec()
  height, width = scenes[0].image.shape[:2]
  rows = (len(scenes) + columns - 1) // columns
  grid = np.full((rows * (2 * height + 6), columns * (width + 4), 3), 255, np.uint8)
  for i, scene in enumerate(scenes):
    panoptic, _ = converter_utils.panoptic_from_segments(scene.segment_ids, scene.segments, spec,
                                                         'preview')
    top, left = (i // columns) * (2 * height + 6), (i % columns) * (width + 4)
    grid[top:top + height, left:left + width] = scene.image
    grid[top + height + 2:top + 2 * height + 2, left:left + width] = colorize_panoptic(panoptic)
  _replace_file(path, _png_bytes(grid))


def generate(output_dir: str, num_train: int = DEFAULT_NUM_TRAIN, num_val: int = DEFAULT_NUM_VAL,
             size: Tuple[int, int] = DEFAULT_SIZE, seed: int = DEFAULT_SEED,
             coco_format_splits: Sequence[str] = ('val',), num_workers: int = 2,
             overwrite: bool = False, progress: bool = True,
             preview_path: Optional[str] = None) -> List[converter_utils.SplitSummary]:
  """Generates the demo dataset into `output_dir` (see the module docstring for the layout)."""
  height, width = size
  if height < 33 or width < 33:
    raise converter_utils.ConversionError(f'--size must be at least 33,33, got {height},{width}')
  if num_train < 0 or num_val < 0:
    raise converter_utils.ConversionError('--num_train and --num_val must be >= 0')
  sizes = {'train': num_train, 'val': num_val}
  for split in coco_format_splits:
    if split not in sizes:
      raise converter_utils.ConversionError(f'unknown split {split!r} in --coco_format_splits')
  descriptor_name = f'{DATASET_NAME}.json'
  descriptor_path = os.path.join(output_dir, descriptor_name)
  if not overwrite and tf.io.gfile.exists(descriptor_path):
    raise converter_utils.ConversionError(
        f'{output_dir} already holds a demo dataset ({descriptor_path}); pass --overwrite')
  with converter_utils.OutputRun(output_dir, list(sizes), overwrite,
                                 files=[descriptor_name]) as run:
    summaries = _generate_splits(run, sizes, size, seed, coco_format_splits, num_workers,
                                 progress)
    run.write_file(descriptor_name,
                   (json.dumps(descriptor_dict(num_train, num_val), indent=2) + '\n').encode())
    run.commit()
  if preview_path:
    save_preview(preview_path, [render_scene(seed, 'val', i, size) for i in range(min(12, num_val))]
                 or [render_scene(seed, 'train', 0, size)])
  return summaries


def _generate_splits(run, sizes, size, seed, coco_format_splits, num_workers, progress):
  """Stages every split's shards and COCO-format copy in `run`."""
  height, width = size
  spec = label_spec()
  summaries = []
  for split, count in sizes.items():
    write_coco = split in coco_format_splits

    def make_example(index, split=split, write_coco=write_coco):
      scene = render_scene(seed, split, index, size)
      name = sample_name(split, index)
      image_png = _png_bytes(scene.image)
      panoptic, counts = converter_utils.panoptic_from_segments(
          scene.segment_ids, scene.segments, spec, name)
      label = converter_utils.encode_panoptic_label(panoptic, converter_utils.LABEL_FORMAT_RAW,
                                                    LABEL_DIVISOR)
      example = converter_utils.create_tf_example(
          image_png, 'png', name, label, converter_utils.LABEL_FORMAT_RAW, height, width)
      if write_coco:
        run.write_file(os.path.join(_COCO_FOLDER, split, f'{name}.png'), image_png)
        run.write_file(os.path.join(_COCO_FOLDER, 'annotations', f'panoptic_{split}',
                                    f'{name}.png'),
                       label_codec.encode_panoptic_png(scene.segment_ids))
      return example.SerializeToString(), counts

    summaries.append(converter_utils.write_split(
        split, range(count), make_example, run.output_dir, num_workers=num_workers,
        progress=progress, run=run))
    if write_coco:
      _write_coco_json(run, split, count, seed, size)
  return summaries


def _write_coco_json(run, split: str, count: int, seed: int, size: Tuple[int, int]):
  """Writes panoptic_<split>.json (segments recomputed from the deterministic renderer)."""
  images, annotations = [], []
  for index in range(count):
    scene = render_scene(seed, split, index, size)
    name = sample_name(split, index)
    images.append({'id': index, 'file_name': f'{name}.png', 'height': size[0], 'width': size[1]})
    annotations.append({'image_id': index, 'file_name': f'{name}.png',
                        'segments_info': scene.segments})
  categories = [{'id': c, 'name': CLASS_NAMES[c], 'isthing': int(c in THING_CLASSES),
                 'color': list(COLORMAP[c]), 'supercategory': 'demo'}
                for c in range(1, len(CLASS_NAMES))]
  data = {'info': {'description': f'{DATASET_NAME} {split} (seed {seed})'},
          'images': images, 'annotations': annotations, 'categories': categories}
  run.write_file(os.path.join(_COCO_FOLDER, 'annotations', f'panoptic_{split}.json'),
                 json.dumps(data).encode())


def _parse_size(text: str) -> Tuple[int, int]:
  try:
    height, width = (int(v) for v in text.split(','))
  except ValueError:
    raise argparse.ArgumentTypeError(f'--size must be H,W, got {text!r}') from None
  return height, width


def main(argv: Optional[Sequence[str]] = None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--output_dir', required=True)
  parser.add_argument('--num_train', type=int, default=DEFAULT_NUM_TRAIN)
  parser.add_argument('--num_val', type=int, default=DEFAULT_NUM_VAL)
  parser.add_argument('--size', type=_parse_size, default=DEFAULT_SIZE,
                      help='H,W (default 129,129; 32k+1 sizes suit kMaX crops).')
  parser.add_argument('--seed', type=int, default=DEFAULT_SEED)
  parser.add_argument('--coco_format_splits', default='val',
                      help='Splits also written in COCO-panoptic format (comma-separated).')
  parser.add_argument('--num_workers', type=int, default=min(4, os.cpu_count() or 1))
  parser.add_argument('--preview', default=None, help='Optional PNG path for a preview grid.')
  converter_utils.add_bool_flag(parser, 'overwrite', False, 'Replace an existing demo dataset')
  converter_utils.add_bool_flag(parser, 'progress', True, 'Draw a progress bar on stderr')
  args = parser.parse_args(argv)
  coco_splits = [s for s in args.coco_format_splits.split(',') if s]
  summaries = generate(args.output_dir, args.num_train, args.num_val, args.size, args.seed,
                       coco_splits, args.num_workers, args.overwrite, args.progress, args.preview)
  converter_utils.print_summary(summaries, args.output_dir)
  return summaries


if __name__ == '__main__':
  sys.exit(converter_utils.run_cli(main))
