"""Seeded synthetic COCO-panoptic GT/prediction sets, for tests and benchmarks.

Each GT image has stuff bands, thing instances, crowd regions (sometimes two
of one category) and unlabeled (VOID) pixels. Each prediction is derived from
its GT with the errors PQ must handle: shifted, shrunk, missed, split, merged
and class-swapped segments, spurious blobs (some inside VOID or crowd) and
optional pixel noise. Everything is a function of the seed.
"""

import json
import os
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

from kmax_tf import panoptic_rgb

# COCO-like non-contiguous category ids: things first, then stuff.
_THING_IDS = (1, 2, 3, 5, 7, 9, 11, 13)
_STUFF_IDS = (101, 102, 105, 110, 120, 130)


def categories() -> List[Dict]:
  """The synthetic set's COCO categories (with isthing)."""
  result = [{'id': i, 'name': f'thing_{i}', 'supercategory': 'thing', 'isthing': 1}
            for i in _THING_IDS]
  result += [{'id': i, 'name': f'stuff_{i}', 'supercategory': 'stuff', 'isthing': 0}
             for i in _STUFF_IDS]
  return result


def _ellipse(height, width, rng):
  cy, cx = rng.integers(0, height), rng.integers(0, width)
  ry = rng.integers(max(2, height // 20), max(3, height // 4))
  rx = rng.integers(max(2, width // 20), max(3, width // 4))
  y = np.arange(height)[:, None]
  x = np.arange(width)[None, :]
  return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1


def _new_id(used: set, rng) -> int:
  while True:
    segment_id = int(rng.integers(1, 1 << 24))
    if segment_id not in used:
      used.add(segment_id)
      return segment_id


def _make_gt(height, width, rng, pixel_noise):
  """Returns (ids uint32 [H, W], {id: (category_id, iscrowd)})."""
  ids = np.zeros((height, width), np.uint32)
  info = {}
  used = set()
  bands = np.sort(rng.integers(0, height, size=int(rng.integers(2, 5))))
  bands[0] = 0
  for top in bands:
    segment_id = _new_id(used, rng)
    ids[top:] = segment_id
    info[segment_id] = (int(rng.choice(_STUFF_IDS)), 0)
  for _ in range(int(rng.integers(3, 10))):
    segment_id = _new_id(used, rng)
    ids[_ellipse(height, width, rng)] = segment_id
    info[segment_id] = (int(rng.choice(_THING_IDS)), 0)
  crowd_category = int(rng.choice(_THING_IDS))
  for _ in range(int(rng.integers(0, 3))):  # Zero, one or two crowd segments.
    segment_id = _new_id(used, rng)
    top, left = int(rng.integers(0, height - 4)), int(rng.integers(0, width - 4))
    ids[top:top + height // 5, left:left + width // 5] = segment_id
    info[segment_id] = (crowd_category, 1)
  # Unlabeled strip and speckles.
  column = int(rng.integers(0, width - 2))
  ids[:, column:column + max(1, width // 30)] = 0
  if pixel_noise:
    ids[rng.random((height, width)) < pixel_noise / 2] = 0
  present = set(np.unique(ids).tolist())
  info = {k: v for k, v in info.items() if k in present}
  return ids, info


def _make_prediction(gt_ids, gt_info, height, width, rng, pixel_noise):
  """Returns (ids uint32 [H, W], {id: category_id}) derived from the GT."""
  pred = np.zeros_like(gt_ids)
  info = {}
  used = set()
  segments = sorted(gt_info)
  previous_same_category = {}
  for segment_id in segments:
    category_id, iscrowd = gt_info[segment_id]
    mask = gt_ids == segment_id
    action = rng.choice(['keep', 'shift', 'shrink', 'miss', 'split', 'merge', 'swap'],
                        p=[0.3, 0.15, 0.15, 0.1, 0.1, 0.1, 0.1])
    if iscrowd:
      action = rng.choice(['keep', 'miss'])
    if action == 'miss':
      continue
    if action == 'shift':
      mask = np.roll(mask, (int(rng.integers(-6, 7)), int(rng.integers(-6, 7))), axis=(0, 1))
    elif action == 'shrink':  # Keep the top 30..90 % of the segment's rows.
      rows = np.flatnonzero(mask.any(axis=1))
      cut = rows[0] + int(np.ceil(rng.uniform(0.3, 0.9) * (rows[-1] - rows[0] + 1)))
      mask[cut:] = False
    if action == 'merge' and category_id in previous_same_category:
      new_id = previous_same_category[category_id]
    else:
      new_id = _new_id(used, rng)
      previous_same_category[category_id] = new_id
    if action == 'swap':
      category_id = int(rng.choice(_THING_IDS + _STUFF_IDS))
    pred[mask] = new_id
    info[new_id] = category_id
    if action == 'split':
      columns = np.flatnonzero(mask.any(axis=0))
      if columns.size > 1:
        half = mask.copy()
        half[:, :columns[columns.size // 2]] = False
        second = _new_id(used, rng)
        pred[half] = second
        info[second] = category_id
  for _ in range(int(rng.integers(1, 4))):  # Spurious blobs, anywhere (VOID, crowd too).
    new_id = _new_id(used, rng)
    pred[_ellipse(height, width, rng)] = new_id
    info[new_id] = int(rng.choice(_THING_IDS + _STUFF_IDS))
  noise = rng.random((height, width)) < pixel_noise
  labels = np.array(sorted(info), np.uint32)
  if labels.size and pixel_noise:
    pred[noise] = rng.choice(labels, size=int(noise.sum()))
  present = set(np.unique(pred).tolist())
  info = {k: v for k, v in info.items() if k in present}
  return pred, info


def _segments_info(ids, info, with_crowd):
  result = []
  for segment_id in sorted(info):
    mask = ids == segment_id
    rows = np.flatnonzero(mask.any(axis=1))
    columns = np.flatnonzero(mask.any(axis=0))
    entry = {'id': int(segment_id), 'area': int(mask.sum()),
             'bbox': [int(columns[0]), int(rows[0]), int(columns[-1] - columns[0] + 1),
                      int(rows[-1] - rows[0] + 1)]}
    if with_crowd:
      entry['category_id'], entry['iscrowd'] = info[segment_id]
    else:
      entry['category_id'], entry['iscrowd'] = info[segment_id], 0
    result.append(entry)
  # Shuffle-free but not id-sorted order, as real JSON files are.
  return result[::-1]


def write_case(root: str, num_images: int, height: int, width: int, seed: int,
               pixel_noise: float = 0.02) -> Tuple[str, str, str, str]:
  """Writes a synthetic set under `root`.

  Args:
    root: output folder.
    num_images: number of GT/prediction pairs.
    height: image height.
    width: image width.
    seed: everything derives from it.
    pixel_noise: fraction of prediction pixels set to a random segment (half
      that fraction of GT pixels become VOID specks). 0 gives clean maps, like
      real annotations and model outputs.

  Returns:
    (gt_json_file, gt_folder, pred_json_file, pred_folder).
  """
  rng = np.random.default_rng(seed)
  gt_folder = os.path.join(root, 'gt')
  pred_folder = os.path.join(root, 'pred')
  os.makedirs(gt_folder, exist_ok=True)
  os.makedirs(pred_folder, exist_ok=True)
  images, gt_annotations, pred_annotations = [], [], []
  for index in range(num_images):
    gt_ids, gt_info = _make_gt(height, width, rng, pixel_noise)
    pred_ids, pred_info = _make_prediction(gt_ids, gt_info, height, width, rng, pixel_noise)
    name = f'{index:012d}'
    images.append({'id': index, 'file_name': name + '.jpg', 'height': height, 'width': width})
    Image.fromarray(panoptic_rgb.ids_to_rgb(gt_ids)).save(os.path.join(gt_folder, name + '.png'))
    Image.fromarray(panoptic_rgb.ids_to_rgb(pred_ids)).save(
        os.path.join(pred_folder, name + '.png'))
    gt_annotations.append({'image_id': index, 'file_name': name + '.png',
                           'segments_info': _segments_info(gt_ids, gt_info, True)})
    pred_annotations.append({'image_id': index, 'file_name': name + '.png',
                             'segments_info': _segments_info(pred_ids, pred_info, False)})
  gt_json_file = os.path.join(root, 'gt.json')
  pred_json_file = os.path.join(root, 'pred.json')
  with open(gt_json_file, 'w') as f:
    json.dump({'images': images, 'annotations': gt_annotations, 'categories': categories()}, f)
  with open(pred_json_file, 'w') as f:
    json.dump({'images': images, 'annotations': pred_annotations,
               'categories': categories()}, f)
  return gt_json_file, gt_folder, pred_json_file, pred_folder
