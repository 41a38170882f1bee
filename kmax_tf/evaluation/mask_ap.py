"""COCO-style mask AP/AR of the thing instances in panoptic predictions.

As DeepLab2's `PanopticInstanceAveragePrecision`: every thing segment of a
panoptic map is an instance; a predicted instance scores
mean(semantic probability of its class) * mean(instance score) over its
pixels; pycocotools' `COCOeval(iouType='segm')` gives the 12 standard numbers.
This accumulator is numpy (call it on host, e.g. in the evaluator's reduce
step, once per image; under tf.distribute pass each replica's local results).
"""

import contextlib
import io
from typing import Dict, List, Sequence

import numpy as np

STAT_NAMES = (
    'AP_Mask', 'AP_Mask_@IoU=0.5', 'AP_Mask_@IoU=0.75', 'AP_Mask_small', 'AP_Mask_medium',
    'AP_Mask_large', 'AR_Mask_maxdets=1', 'AR_Mask_maxdets=10', 'AR_Mask_maxdets=100',
    'AR_Mask_small', 'AR_Mask_medium', 'AR_Mask_large')


def _bbox(mask: np.ndarray) -> List[float]:
  rows = np.flatnonzero(mask.any(axis=1))
  columns = np.flatnonzero(mask.any(axis=0))
  return [float(columns[0]), float(rows[0]), float(columns[-1] - columns[0] + 1),
          float(rows[-1] - rows[0] + 1)]


class MaskAP:
  """Accumulates GT and predicted thing instances; `result()` runs COCOeval."""

  def __init__(self, num_classes: int, ignore_label: int, label_divisor: int,
               thing_class_ids: Sequence[int]):
    """Args: the dataset's label format (contiguous class ids)."""
    self.num_classes = num_classes
    self.ignore_label = ignore_label
    self.label_divisor = label_divisor
    self.thing_class_ids = tuple(sorted(int(c) for c in thing_class_ids))
    bad = [c for c in self.thing_class_ids if not 0 <= c < num_classes]
    if bad:
      raise ValueError(f'thing_class_ids {bad} are outside [0, {num_classes}).')
    self.reset_state()

  def reset_state(self) -> None:
    self._images = []
    self._gt_annotations = []
    self._detections = []
    self._cached = None

  reset_states = reset_state

  def _thing_segments(self, panoptic: np.ndarray) -> np.ndarray:
    """Thing segment ids in order of first appearance (row-major), as DeepLab2's tf.unique.

    The order matters: COCO evaluation keeps the given order among equal scores.
    """
    ids, first = np.unique(np.asarray(panoptic).reshape(-1), return_index=True)
    ids = ids[np.argsort(first, kind='stable')]
    classes = ids // self.label_divisor
    keep = np.isin(classes, self.thing_class_ids) & (classes != self.ignore_label)
    return ids[keep]

  def update_state(self, gt_panoptic, pred_panoptic, semantic_probability, instance_score_map,
                   gt_is_crowd=None) -> None:
    """Adds one image (or a batch, if the maps have a leading batch axis).

    Args:
      gt_panoptic: int [H, W], semantic * label_divisor + instance.
      pred_panoptic: int [H, W], same encoding.
      semantic_probability: float [H, W, C] class probabilities, or [H, W]
        per-pixel score of the predicted class (DeepLab2's semantic scores).
      instance_score_map: float [H, W], per-pixel instance score.
      gt_is_crowd: optional bool [H, W]; GT instances on crowd pixels are
        `iscrowd` annotations.
    """
    from pycocotools import mask as mask_utils
    gt = np.asarray(gt_panoptic)
    if gt.ndim == 3:
      for i in range(gt.shape[0]):
        self.update_state(gt[i], np.asarray(pred_panoptic)[i],
                          np.asarray(semantic_probability)[i], np.asarray(instance_score_map)[i],
                          None if gt_is_crowd is None else np.asarray(gt_is_crowd)[i])
      return
    pred = np.asarray(pred_panoptic)
    # Kept in their own dtype ([H, W, C] can be large); means are float64.
    probability = np.asarray(semantic_probability)
    scores = np.asarray(instance_score_map)
    if pred.shape != gt.shape or scores.shape != gt.shape or probability.shape[:2] != gt.shape:
      raise ValueError(f'Shapes differ: gt {gt.shape}, pred {pred.shape}, semantic probability '
                       f'{probability.shape}, instance scores {scores.shape}.')
    crowd = np.zeros(gt.shape, bool) if gt_is_crowd is None else np.asarray(gt_is_crowd, bool)
    self._cached = None
    image_id = len(self._images) + 1
    height, width = gt.shape
    self._images.append({'id': image_id, 'height': height, 'width': width})

    def encode(mask):
      rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
      rle['counts'] = rle['counts'].decode('ascii')
      return rle

    for segment_id in self._thing_segments(gt).tolist():
      mask = gt == segment_id
      self._gt_annotations.append({
          'id': len(self._gt_annotations) + 1, 'image_id': image_id,
          'category_id': int(segment_id // self.label_divisor), 'segmentation': encode(mask),
          'area': float(mask.sum()), 'bbox': _bbox(mask), 'iscrowd': int(crowd[mask].any())})
    for segment_id in self._thing_segments(pred).tolist():
      mask = pred == segment_id
      class_id = int(segment_id // self.label_divisor)
      class_probability = probability[..., class_id] if probability.ndim == 3 else probability
      score = float(np.mean(class_probability[mask], dtype=np.float64) *
                    np.mean(scores[mask], dtype=np.float64))
      self._detections.append({'image_id': image_id, 'category_id': class_id,
                               'segmentation': encode(mask), 'score': score})

  def result(self, verbose: bool = False) -> Dict[str, float]:
    """The 12 COCO numbers by name (`STAT_NAMES`); zeros without detections."""
    if self._cached is not None:
      return dict(self._cached)
    if not self._detections or not self._gt_annotations:
      self._cached = {name: 0.0 for name in STAT_NAMES}
      return dict(self._cached)
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
      coco_gt = COCO()
      coco_gt.dataset = {'images': list(self._images), 'annotations': list(self._gt_annotations),
                         'categories': [{'id': c} for c in self.thing_class_ids]}
      coco_gt.createIndex()
      coco_dt = coco_gt.loadRes([dict(d) for d in self._detections])
      evaluation = COCOeval(coco_gt, coco_dt, iouType='segm')
      evaluation.evaluate()
      evaluation.accumulate()
      evaluation.summarize()
    if verbose:
      print(output.getvalue())
    self._cached = {name: float(value) for name, value in zip(STAT_NAMES, evaluation.stats)}
    return dict(self._cached)

  def summary_scalars(self, prefix: str = 'evaluation/ap/',
                      detailed: bool = False) -> Dict[str, float]:
    """DeepLab2's names: AP_Mask only, or all 12 with `detailed`."""
    results = self.result()
    names = STAT_NAMES if detailed else STAT_NAMES[:1]
    return {prefix + name: results[name] for name in names}

  @property
  def num_images(self) -> int:
    return len(self._images)

  @property
  def num_gt_instances(self) -> int:
    return len(self._gt_annotations)
