"""Panoptic Quality (PQ, SQ, RQ) with the official panopticapi rules.

The matching follows `panopticapi.evaluation.pq_compute` exactly:

* a ground-truth (GT) and a predicted segment of the same category match if
  their IoU is > 0.5; the union leaves out the predicted pixels that are VOID
  in the GT;
* crowd GT segments are never matched and are not false negatives;
* an unmatched prediction is not a false positive if more than half of it lies
  in VOID or in the crowd region of its own category;
* IoUs are summed in float64 in panopticapi's order (GT id, then prediction id,
  image after image), TP/FP/FN are integer counts.

DeepLab2's in-loop variant (`variant='deeplab2'`, kept to compare with numbers
reported by DeepLab2) differs: VOID is only the id `ignore_label * divisor`, the
crowd is plain void, and the class average includes the TP/FN/FP means.

This module is pure numpy. `PQTotals` holds per-category sums; `match_image`
matches one image and `add_matches` folds it in; `summarize` turns totals
into panopticapi's result dict.
"""

import dataclasses
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

OFFICIAL = 'official'
DEEPLAB2 = 'deeplab2'
VARIANTS = (OFFICIAL, DEEPLAB2)


@dataclasses.dataclass
class PQTotals:
  """Per-category PQ accumulators (category positions 0..K-1).

  Attributes:
    iou: float64 [K], sum of the IoUs of matched pairs.
    tp: int64 [K], true positives.
    fp: int64 [K], false positives.
    fn: int64 [K], false negatives.
  """
  iou: np.ndarray
  tp: np.ndarray
  fp: np.ndarray
  fn: np.ndarray

  @classmethod
  def zeros(cls, num_categories: int) -> 'PQTotals':
    return cls(np.zeros(num_categories, np.float64), np.zeros(num_categories, np.int64),
               np.zeros(num_categories, np.int64), np.zeros(num_categories, np.int64))

  def __iadd__(self, other: 'PQTotals') -> 'PQTotals':
    self.iou += other.iou
    self.tp += other.tp
    self.fp += other.fp
    self.fn += other.fn
    return self


@dataclasses.dataclass
class ImageMatches:
  """One image's PQ outcome, to be folded into `PQTotals` in image order.

  Attributes:
    categories: int64 [M], category position of each matched pair, in
      panopticapi's order.
    ious: float64 [M], the IoU of each matched pair.
    fp: int64 [K], false positives per category.
    fn: int64 [K], false negatives per category.
  """
  categories: np.ndarray
  ious: np.ndarray
  fp: np.ndarray
  fn: np.ndarray


def add_matches(totals: PQTotals, matches: ImageMatches) -> None:
  """Folds one image into `totals` (IoUs added one by one, as panopticapi)."""
  iou_totals = totals.iou
  for category, value in zip(matches.categories.tolist(), matches.ious.tolist()):
    iou_totals[category] += value
  np.add.at(totals.tp, matches.categories, 1)
  totals.fp += matches.fp
  totals.fn += matches.fn


def match_image(intersections: np.ndarray, gt_category: np.ndarray, gt_is_crowd: np.ndarray,
                gt_area: np.ndarray, pred_category: np.ndarray, num_categories: int,
                crowd_segment_of_category: Optional[Mapping[int, int]] = None) -> ImageMatches:
  """Official PQ matching of one image.

  Segments are given by index: GT segment g (1..G) and predicted segment p
  (1..P); index 0 is VOID on both sides (unlabeled GT pixels / pixels without a
  prediction). Indices must follow ascending segment id so that IoUs are summed
  in panopticapi's order.

  Args:
    intersections: int64 [G + 1, P + 1], pixel counts of GT index x prediction
      index.
    gt_category: int [G], category position of each GT segment.
    gt_is_crowd: bool [G].
    gt_area: int64 [G], GT segment areas (panopticapi takes them from the GT
      JSON).
    pred_category: int [P], category position of each predicted segment.
    num_categories: K, the number of category positions.
    crowd_segment_of_category: category position -> GT index (1..G) of the
      crowd segment that excuses false positives of that category (panopticapi
      keeps the last crowd segment per category in JSON order). Default: the
      last crowd segment by index.

  Returns:
    The image's `ImageMatches`.
  """
  gt_category = np.asarray(gt_category, np.int64)
  pred_category = np.asarray(pred_category, np.int64)
  gt_is_crowd = np.asarray(gt_is_crowd, bool)
  gt_area = np.asarray(gt_area, np.int64)
  segments = intersections[1:, 1:]
  void_overlap = intersections[0, 1:]
  pred_area = intersections.sum(axis=0)[1:]

  gt_index, pred_index = np.nonzero(segments)  # Row-major: panopticapi's order.
  same = (gt_category[gt_index] == pred_category[pred_index]) & ~gt_is_crowd[gt_index]
  gt_index = gt_index[same]
  pred_index = pred_index[same]
  overlap = segments[gt_index, pred_index]
  union = pred_area[pred_index] + gt_area[gt_index] - overlap - void_overlap[pred_index]
  iou = overlap / union
  matched = iou > 0.5
  gt_matched = np.zeros(len(gt_category), bool)
  pred_matched = np.zeros(len(pred_category), bool)
  gt_matched[gt_index[matched]] = True
  pred_matched[pred_index[matched]] = True

  missed = ~gt_matched & ~gt_is_crowd
  fn = np.bincount(gt_category[missed], minlength=num_categories).astype(np.int64)

  if crowd_segment_of_category is None:
    crowd_segment_of_category = {}
    for g in np.flatnonzero(gt_is_crowd).tolist():
      crowd_segment_of_category[int(gt_category[g])] = g + 1
  unmatched = np.flatnonzero(~pred_matched)
  ignored = void_overlap[unmatched].copy()
  if crowd_segment_of_category:
    for k, p in enumerate(unmatched.tolist()):
      crowd = crowd_segment_of_category.get(int(pred_category[p]))
      if crowd is not None:
        ignored[k] += intersections[crowd, p + 1]
  spurious = unmatched[~(ignored / pred_area[unmatched] > 0.5)]
  fp = np.bincount(pred_category[spurious], minlength=num_categories).astype(np.int64)
  return ImageMatches(gt_category[gt_index[matched]], iou[matched], fp, fn)


_DENSE_KEY_RANGE = 1 << 22


def _index_segments(keys: np.ndarray, void: np.ndarray):
  """Flat keys -> (int64 index map with 0 for void, sorted unique segment keys).

  DeepLab2 panoptic ids span a small range (classes * label_divisor), so a
  histogram over the range replaces sorting when it can.
  """
  if np.all(void):
    return np.zeros(keys.shape, np.int64), keys[:0]
  labeled = ~void
  low = int(np.min(keys, where=labeled, initial=np.iinfo(np.int64).max))
  high = int(np.max(keys, where=labeled, initial=np.iinfo(np.int64).min))
  if high - low + 1 <= _DENSE_KEY_RANGE:
    # Position 0 is VOID, key k sits at k - low + 1.
    shifted = keys - (low - 1)
    shifted[void] = 0
    present = np.bincount(shifted, minlength=high - low + 2) > 0
    present[0] = False
    table = np.cumsum(present)
    return table[shifted], np.flatnonzero(present) + (low - 1)
  index = np.zeros(keys.shape, np.int64)
  unique_keys, inverse = np.unique(keys[labeled], return_inverse=True)
  index[labeled] = inverse.reshape(-1) + 1
  return index, unique_keys


def _check_classes(classes: np.ndarray, num_classes: int, ignore_label: int,
                   label_divisor: int, name: str) -> None:
  """Raises unless every class is in [0, num_classes) or the ignore label."""
  if not classes.size or (classes.min() >= 0 and classes.max() < num_classes):
    return
  bad = classes[((classes < 0) | (classes >= num_classes)) & (classes != ignore_label)]
  if bad.size:
    raise ValueError(f'{name} panoptic map has class {bad[0]} outside [0, {num_classes}) '
                     f'(label_divisor {label_divisor}, ignore label {ignore_label}).')


def _intersections(gt_index, num_gt, pred_index, num_pred) -> np.ndarray:
  flat = gt_index * (num_pred + 1) + pred_index
  return np.bincount(flat.ravel(), minlength=(num_gt + 1) * (num_pred + 1)).reshape(
      num_gt + 1, num_pred + 1).astype(np.int64)


def accumulate_label_maps(totals: PQTotals, gt_panoptic: np.ndarray, pred_panoptic: np.ndarray,
                          *, num_classes: int, ignore_label: int, label_divisor: int,
                          gt_is_crowd: Optional[np.ndarray] = None,
                          gt_crowd_category: Optional[np.ndarray] = None) -> None:
  """Official PQ of one image given in DeepLab2's label format.

  Category positions in `totals` are the contiguous class ids (0..C-1); the
  ignore label's entry stays zero.

  Args:
    totals: accumulators with `num_classes` entries, updated in place.
    gt_panoptic: int [H, W], semantic * label_divisor + instance.
    pred_panoptic: int [H, W], same encoding; pixels of class `ignore_label`
      are unlabeled (VOID).
    num_classes: number of contiguous classes.
    ignore_label: class id of VOID.
    label_divisor: panoptic label divisor.
    gt_is_crowd: optional bool [H, W]. Crowd pixels whose GT class is not the
      ignore label form one crowd segment per class (DeepLab2 data made with
      crowd kept, instance id 0). Crowd pixels that carry the ignore label
      (DeepLab2's default `treat_crowd_as_ignore`) have lost their class and
      count as VOID.
    gt_crowd_category: optional int [H, W], the class of crowd regions (values
      other than the ignore label), for GT in which crowd was turned into VOID
      but its class is known; overrides `gt_is_crowd`.
  """
  gt = np.asarray(gt_panoptic, np.int64).ravel()
  pred = np.asarray(pred_panoptic, np.int64).ravel()
  if gt.shape != pred.shape or np.shape(gt_panoptic) != np.shape(pred_panoptic):
    raise ValueError(f'GT panoptic shape {np.shape(gt_panoptic)} differs from prediction shape '
                     f'{np.shape(pred_panoptic)}.')
  gt_class = gt // label_divisor
  pred_class = pred // label_divisor
  for name, classes in (('GT', gt_class), ('prediction', pred_class)):
    _check_classes(classes, num_classes, ignore_label, label_divisor, name)
  crowd = np.zeros(gt.shape, bool)
  crowd_class = gt_class
  if gt_crowd_category is not None:
    crowd_class = np.asarray(gt_crowd_category, np.int64).ravel()
    crowd = crowd_class != ignore_label
  elif gt_is_crowd is not None:
    crowd = np.asarray(gt_is_crowd, bool).ravel() & (gt_class != ignore_label)
  # GT keys: panoptic id + 1 for segments; -(class + 1) for a class's crowd.
  gt_keys = np.where(crowd, -(crowd_class + 1), gt + 1)
  gt_void = (gt_class == ignore_label) & ~crowd
  gt_index, gt_segment_keys = _index_segments(gt_keys, gt_void)
  pred_index, pred_segment_keys = _index_segments(pred, pred_class == ignore_label)
  intersections = _intersections(gt_index, len(gt_segment_keys), pred_index,
                                 len(pred_segment_keys))
  gt_is_crowd_segment = gt_segment_keys < 0
  gt_category = np.where(gt_is_crowd_segment, -gt_segment_keys - 1,
                         (gt_segment_keys - 1) // label_divisor)
  add_matches(totals, match_image(intersections, gt_category, gt_is_crowd_segment,
                                  intersections.sum(axis=1)[1:], pred_segment_keys // label_divisor,
                                  len(totals.iou)))


def accumulate_label_maps_deeplab2(totals: PQTotals, gt_panoptic: np.ndarray,
                                   pred_panoptic: np.ndarray, *, num_classes: int,
                                   ignore_label: int, label_divisor: int) -> None:
  """DeepLab2's in-loop PQ rules for one image (see the module docstring).

  Args and category positions as `accumulate_label_maps`; crowd is not used.
  """
  gt = np.asarray(gt_panoptic, np.int64).ravel()
  pred = np.asarray(pred_panoptic, np.int64).ravel()
  if np.shape(gt_panoptic) != np.shape(pred_panoptic):
    raise ValueError(f'GT panoptic shape {np.shape(gt_panoptic)} differs from prediction shape '
                     f'{np.shape(pred_panoptic)}.')
  void_id = ignore_label * label_divisor
  gt_ids, gt_index = np.unique(gt, return_inverse=True)
  pred_ids, pred_index = np.unique(pred, return_inverse=True)
  for name, ids in (('GT', gt_ids), ('prediction', pred_ids)):
    _check_classes(ids // label_divisor, num_classes, ignore_label, label_divisor, name)
  counts = np.bincount(gt_index.ravel() * len(pred_ids) + pred_index.ravel(),
                       minlength=len(gt_ids) * len(pred_ids)).reshape(len(gt_ids), len(pred_ids))
  gt_area = counts.sum(axis=1)
  pred_area = counts.sum(axis=0)
  void_rows = np.flatnonzero(gt_ids == void_id)
  void_overlap = counts[void_rows[0]] if void_rows.size else np.zeros(len(pred_ids), np.int64)
  gt_class = gt_ids // label_divisor
  pred_class = pred_ids // label_divisor
  gt_matched = np.zeros(len(gt_ids), bool)
  pred_matched = np.zeros(len(pred_ids), bool)
  iou_image = np.zeros(len(totals.iou), np.float64)
  for g, p in zip(*np.nonzero(counts)):
    if gt_class[g] != pred_class[p] or pred_class[p] == ignore_label:
      continue
    union = gt_area[g] + pred_area[p] - counts[g, p] - void_overlap[p]
    iou = counts[g, p] / union
    if iou > 0.5:
      totals.tp[gt_class[g]] += 1
      iou_image[gt_class[g]] += iou
      gt_matched[g] = True
      pred_matched[p] = True
  missed = ~gt_matched & (gt_class != ignore_label)
  np.add.at(totals.fn, gt_class[missed], 1)
  spurious = ~pred_matched & ~(void_overlap / pred_area > 0.5) & (pred_class != ignore_label)
  np.add.at(totals.fp, pred_class[spurious], 1)
  totals.iou += iou_image


def summarize(totals: PQTotals, category_ids: Sequence[int], is_thing: Sequence[bool]) -> Dict:
  """panopticapi's `pq_average` for All, Things and Stuff.

  Args:
    totals: accumulators; entry k belongs to `category_ids[k]`.
    category_ids: ids used as keys of the per-class results, in the order the
      class averages are summed (panopticapi: the GT JSON's category order).
    is_thing: per entry.

  Returns:
    {'All': {'pq','sq','rq','n'}, 'Things': {...}, 'Stuff': {...},
     'per_class': {category_id: {'pq','sq','rq'}}}. Categories without any
    TP, FP or FN give 0 and are not counted in n; a group with n == 0 gives 0
    (panopticapi divides by zero there).
  """
  results = {}
  per_class = {}
  for name, want_thing in (('All', None), ('Things', True), ('Stuff', False)):
    pq, sq, rq, n = 0.0, 0.0, 0.0, 0
    for k, category_id in enumerate(category_ids):
      if want_thing is not None and bool(is_thing[k]) != want_thing:
        continue
      iou = float(totals.iou[k])
      tp, fp, fn = int(totals.tp[k]), int(totals.fp[k]), int(totals.fn[k])
      if tp + fp + fn == 0:
        per_class[category_id] = {'pq': 0.0, 'sq': 0.0, 'rq': 0.0}
        continue
      n += 1
      pq_class = iou / (tp + 0.5 * fp + 0.5 * fn)
      sq_class = iou / tp if tp != 0 else 0.0
      rq_class = tp / (tp + 0.5 * fp + 0.5 * fn)
      per_class[category_id] = {'pq': pq_class, 'sq': sq_class, 'rq': rq_class}
      pq += pq_class
      sq += sq_class
      rq += rq_class
    if n:
      results[name] = {'pq': pq / n, 'sq': sq / n, 'rq': rq / n, 'n': n}
    else:
      results[name] = {'pq': 0.0, 'sq': 0.0, 'rq': 0.0, 'n': 0}
  results['per_class'] = per_class
  return results


def summarize_deeplab2(totals: PQTotals, category_ids: Sequence[int],
                       is_thing: Sequence[bool]) -> Dict:
  """DeepLab2's summary: means over classes with TP + FN + FP > 0.

  PQ per class is SQ * RQ; 'All' also has DeepLab2's 'tp', 'fn', 'fp' class
  means. 'Things'/'Stuff' apply the same formula to the subsets.
  """
  results = {}
  per_class = {}
  for k, category_id in enumerate(category_ids):
    tp, fp, fn = float(totals.tp[k]), float(totals.fp[k]), float(totals.fn[k])
    sq = float(totals.iou[k]) / tp if tp else 0.0
    denominator = tp + 0.5 * fn + 0.5 * fp
    rq = tp / denominator if denominator else 0.0
    per_class[category_id] = {'pq': sq * rq, 'sq': sq, 'rq': rq}
  for name, want_thing in (('All', None), ('Things', True), ('Stuff', False)):
    keys = [k for k in range(len(category_ids))
            if (want_thing is None or bool(is_thing[k]) == want_thing)
            and totals.tp[k] + totals.fp[k] + totals.fn[k] > 0]
    n = len(keys)
    group = {'pq': 0.0, 'sq': 0.0, 'rq': 0.0, 'n': n}
    if n:
      for metric in ('pq', 'sq', 'rq'):
        group[metric] = float(np.mean([per_class[category_ids[k]][metric] for k in keys]))
      if want_thing is None:
        group['tp'] = float(np.mean(totals.tp[keys]))
        group['fn'] = float(np.mean(totals.fn[keys]))
        group['fp'] = float(np.mean(totals.fp[keys]))
    results[name] = group
  results['per_class'] = per_class
  return results


def format_table(results: Mapping) -> List[str]:
  """panopticapi's console table as lines."""
  lines = ['{:10s}| {:>5s}  {:>5s}  {:>5s} {:>5s}'.format('', 'PQ', 'SQ', 'RQ', 'N'),
           '-' * (10 + 7 * 4)]
  for name in ('All', 'Things', 'Stuff'):
    group = results[name]
    lines.append('{:10s}| {:5.1f}  {:5.1f}  {:5.1f} {:5d}'.format(
        name, 100 * group['pq'], 100 * group['sq'], 100 * group['rq'], group['n']))
  return lines
