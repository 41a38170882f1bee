"""Shared helpers for the evaluation tests: panopticapi runs and label-map conversion."""

import contextlib
import io
import json
import os

import numpy as np
from PIL import Image

from kmax_tf import panoptic_rgb


def panopticapi_pq(gt_json_file, pred_json_file, gt_folder, pred_folder):
  """panopticapi's pq_compute, quietly (it prints progress)."""
  from panopticapi.evaluation import pq_compute
  with contextlib.redirect_stdout(io.StringIO()):
    return pq_compute(gt_json_file, pred_json_file, gt_folder, pred_folder)


def max_difference(ours, reference):
  """Largest |ours - reference| over All/Things/Stuff and per-class values."""
  differences = []
  for group in ('All', 'Things', 'Stuff'):
    for metric in ('pq', 'sq', 'rq', 'n'):
      differences.append(abs(float(ours[group][metric]) - float(reference[group][metric])))
  assert set(ours['per_class']) == set(reference['per_class'])
  for category_id, values in reference['per_class'].items():
    for metric in ('pq', 'sq', 'rq'):
      differences.append(abs(float(ours['per_class'][category_id][metric]) - float(values[metric])))
  return max(differences)


def label_maps_to_coco(root, pairs, *, num_classes, ignore_label, label_divisor, thing_class_ids):
  """Writes DeepLab2-format pairs as panopticapi inputs.

  Args:
    root: output folder.
    pairs: list of (gt_panoptic, pred_panoptic, gt_crowd_category or None).
    num_classes, ignore_label, label_divisor, thing_class_ids: label format.

  Returns:
    (gt_json_file, gt_folder, pred_json_file, pred_folder).
  """
  categories = [{'id': c, 'name': str(c), 'isthing': int(c in thing_class_ids)}
                for c in range(num_classes) if c != ignore_label]
  folders = {side: os.path.join(root, side) for side in ('gt', 'pred')}
  for folder in folders.values():
    os.makedirs(folder, exist_ok=True)
  annotations = {'gt': [], 'pred': []}
  for index, (gt, pred, crowd_category) in enumerate(pairs):
    name = f'{index:06d}.png'
    for side, panoptic in (('gt', gt), ('pred', pred)):
      panoptic = np.asarray(panoptic, np.int64)
      classes = panoptic // label_divisor
      ids = np.where(classes == ignore_label, 0, panoptic + 1)
      if side == 'gt' and crowd_category is not None:
        crowd = crowd_category != ignore_label
        ids = np.where(crowd, (1 << 23) + crowd_category, ids)
      segments = []
      for segment_id in np.unique(ids).tolist():
        if segment_id == 0:
          continue
        is_crowd = segment_id >= (1 << 23)
        category = segment_id - (1 << 23) if is_crowd else (segment_id - 1) // label_divisor
        segments.append({'id': int(segment_id), 'category_id': int(category),
                         'iscrowd': int(is_crowd), 'area': int((ids == segment_id).sum())})
      Image.fromarray(panoptic_rgb.ids_to_rgb(ids)).save(os.path.join(folders[side], name))
      annotations[side].append({'image_id': index, 'file_name': name, 'segments_info': segments})
  files = {}
  for side in ('gt', 'pred'):
    files[side] = os.path.join(root, side + '.json')
    with open(files[side], 'w') as f:
      json.dump({'annotations': annotations[side], 'categories': categories}, f)
  return files['gt'], folders['gt'], files['pred'], folders['pred']


def random_label_pairs(seed, count, height=40, width=56):
  """DeepLab2-format pairs with void, crowd, thing/stuff, noise; classes 0..9, void 0."""
  rng = np.random.default_rng(seed)
  pairs = []
  for _ in range(count):
    semantic = rng.integers(6, 10, size=(height // 8, width // 8)).repeat(8, 0).repeat(8, 1)
    instance = np.zeros_like(semantic)
    for k in range(int(rng.integers(2, 6))):
      top, left = rng.integers(0, height - 8), rng.integers(0, width - 8)
      h, w = rng.integers(4, 16, size=2)
      semantic[top:top + h, left:left + w] = rng.integers(1, 6)
      instance[top:top + h, left:left + w] = k + 1
    gt = semantic * 100 + instance
    gt[rng.random(gt.shape) < 0.05] = 0
    crowd_category = np.zeros_like(gt)
    top, left = rng.integers(0, height - 8), rng.integers(0, width - 8)
    crowd_category[top:top + 8, left:left + 8] = rng.integers(1, 6)
    gt[crowd_category > 0] = 0
    pred = np.roll(gt, int(rng.integers(-3, 4)), axis=1)
    pred[rng.random(gt.shape) < 0.05] = rng.integers(1, 10) * 100 + 7
    pred[top + 2:top + 6, left + 2:left + 6] = crowd_category[top, left] * 100 + 9
    pairs.append((gt, pred, crowd_category))
  return pairs
