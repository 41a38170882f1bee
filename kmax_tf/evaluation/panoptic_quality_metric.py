"""Streaming Panoptic Quality for the training loop and `--mode=eval`.

`PanopticQualityMetric` takes batches of DeepLab2-format panoptic maps
(semantic * label_divisor + instance) and accumulates per-class IoU sums
(float64) and TP/FP/FN counts (int64) in TensorFlow variables.

Distribution: the variables are ON_READ variables with SUM aggregation. Under
`tf.distribute` each replica adds its images to its own copy in
`update_state` (called inside `strategy.run`, eagerly or in a `tf.function`);
reading them in cross-replica context (`result()`) sums the copies. Counts are
integers, so the merge is exact; IoU sums are float64, so the merged values
agree with a single-device run and with panopticapi to ~1e-15.

The per-image work is numpy (`panoptic_quality`) run through
`tf.numpy_function`, so `update_state` also works inside graphs.
"""

from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from kmax_tf.evaluation import panoptic_quality


class PanopticQualityMetric(tf.Module):
  """Streaming PQ / SQ / RQ: per class, All, Things and Stuff.

  Example:
    metric = PanopticQualityMetric(134, 0, 256, thing_class_ids=range(1, 81))
    metric.update_state(gt_panoptic, pred_panoptic, gt_is_crowd)
    metric.result()['All']['pq']
  """

  def __init__(self, num_classes: int, ignore_label: int, label_divisor: int,
               thing_class_ids: Sequence[int], variant: str = panoptic_quality.OFFICIAL,
               class_names: Optional[Sequence[str]] = None, name: str = 'panoptic_quality'):
    """Creates the metric (inside `strategy.scope()` when distributing).

    Args:
      num_classes: number of contiguous semantic classes (incl. the ignore
        label if it is in [0, num_classes)).
      ignore_label: class id of unlabeled pixels (VOID).
      label_divisor: panoptic label divisor.
      thing_class_ids: contiguous ids of the classes with instances.
      variant: 'official' (panopticapi's rules) or 'deeplab2' (DeepLab2's
        in-loop rules, to compare with numbers DeepLab2 reported).
      class_names: optional names, len num_classes, used by `format_per_class`.
      name: module name.
    """
    super().__init__(name=name)
    if variant not in panoptic_quality.VARIANTS:
      raise ValueError(f'variant must be one of {panoptic_quality.VARIANTS}, got {variant!r}.')
    if num_classes <= 0 or label_divisor <= 0:
      raise ValueError(f'num_classes ({num_classes}) and label_divisor ({label_divisor}) must '
                       'be positive.')
    thing_class_ids = [int(c) for c in thing_class_ids]
    bad = [c for c in thing_class_ids if not 0 <= c < num_classes]
    if bad:
      raise ValueError(f'thing_class_ids {bad} are outside [0, {num_classes}).')
    if class_names is not None and len(class_names) != num_classes:
      raise ValueError(f'class_names has {len(class_names)} entries, expected {num_classes}.')
    self.num_classes = num_classes
    self.ignore_label = ignore_label
    self.label_divisor = label_divisor
    self.thing_class_ids = tuple(sorted(set(thing_class_ids)))
    self.variant = variant
    self.class_names = tuple(class_names) if class_names is not None else None
    # Evaluated classes: all but the ignore label, in ascending id order.
    self._class_ids = [c for c in range(num_classes) if c != ignore_label]
    self._is_thing = [c in self.thing_class_ids for c in self._class_ids]

    def variable(name, dtype):
      return tf.Variable(tf.zeros([num_classes], dtype), trainable=False, name=name,
                         synchronization=tf.VariableSynchronization.ON_READ,
                         aggregation=tf.VariableAggregation.SUM)

    with self.name_scope:
      self.iou_sum = variable('iou_sum', tf.float64)
      self.true_positives = variable('true_positives', tf.int64)
      self.false_positives = variable('false_positives', tf.int64)
      self.false_negatives = variable('false_negatives', tf.int64)

  def _batch_statistics(self, gt, pred, crowd, crowd_category, has_crowd, has_crowd_category):
    totals = panoptic_quality.PQTotals.zeros(self.num_classes)
    if gt.ndim == 2:
      gt, pred, crowd, crowd_category = gt[None], pred[None], crowd[None], crowd_category[None]
    if gt.shape != pred.shape:
      raise ValueError(f'GT panoptic shape {gt.shape} differs from prediction shape '
                       f'{pred.shape}.')
    for i in range(gt.shape[0]):
      if self.variant == panoptic_quality.DEEPLAB2:
        panoptic_quality.accumulate_label_maps_deeplab2(
            totals, gt[i], pred[i], num_classes=self.num_classes,
            ignore_label=self.ignore_label, label_divisor=self.label_divisor)
      else:
        panoptic_quality.accumulate_label_maps(
            totals, gt[i], pred[i], num_classes=self.num_classes,
            ignore_label=self.ignore_label, label_divisor=self.label_divisor,
            gt_is_crowd=crowd[i] if has_crowd else None,
            gt_crowd_category=crowd_category[i] if has_crowd_category else None)
    return totals.iou, totals.tp, totals.fp, totals.fn

  def update_state(self, gt_panoptic, pred_panoptic, gt_is_crowd=None,
                   gt_crowd_category=None) -> None:
    """Adds a batch.

    Args:
      gt_panoptic: int32 [B, H, W] (or [H, W]), semantic * label_divisor +
        instance; pixels of the ignore class are VOID.
      pred_panoptic: int32, same shape and encoding.
      gt_is_crowd: optional bool [B, H, W] (DeepLab2's `is_crowd_gt`). Crowd
        pixels whose GT class is not the ignore label form one crowd segment
        per class, handled as panopticapi's `iscrowd` segments; crowd pixels
        labeled with the ignore label count as VOID. Unused by 'deeplab2'.
      gt_crowd_category: optional int [B, H, W], the class of crowd pixels
        (ignore label elsewhere), for GT whose crowd was made VOID but whose
        crowd class is known; takes precedence over `gt_is_crowd`.
    """
    gt = tf.cast(gt_panoptic, tf.int64)
    pred = tf.cast(pred_panoptic, tf.int64)
    has_crowd = gt_is_crowd is not None
    has_crowd_category = gt_crowd_category is not None
    crowd = tf.cast(gt_is_crowd, tf.bool) if has_crowd else tf.zeros([1] * gt.shape.rank, tf.bool)
    crowd_category = (tf.cast(gt_crowd_category, tf.int64) if has_crowd_category
                      else tf.zeros([1] * gt.shape.rank, tf.int64))

    def statistics(gt_array, pred_array, crowd_array, crowd_category_array):
      return self._batch_statistics(gt_array, pred_array, crowd_array, crowd_category_array,
                                    has_crowd, has_crowd_category)

    iou, tp, fp, fn = tf.numpy_function(statistics, [gt, pred, crowd, crowd_category],
                                        [tf.float64, tf.int64, tf.int64, tf.int64],
                                        stateful=True, name='panoptic_quality_statistics')
    for variable, value in ((self.iou_sum, iou), (self.true_positives, tp),
                            (self.false_positives, fp), (self.false_negatives, fn)):
      value.set_shape([self.num_classes])
      variable.assign_add(value)

  def totals(self) -> panoptic_quality.PQTotals:
    """numpy totals over all replicas, indexed by class id."""
    return panoptic_quality.PQTotals(
        np.asarray(self.iou_sum.read_value(), np.float64),
        np.asarray(self.true_positives.read_value(), np.int64),
        np.asarray(self.false_positives.read_value(), np.int64),
        np.asarray(self.false_negatives.read_value(), np.int64))

  def result(self) -> Dict:
    """{'All'|'Things'|'Stuff': {'pq','sq','rq','n'}, 'per_class': {class_id: {...}}}.

    'official' follows panopticapi's `pq_average`; 'deeplab2' follows
    DeepLab2's summary (its 'All' also has the 'tp', 'fn', 'fp' class means).
    Call in cross-replica context (outside `strategy.run`).
    """
    totals = self.totals()
    keep = np.asarray(self._class_ids, np.int64)
    subset = panoptic_quality.PQTotals(totals.iou[keep], totals.tp[keep], totals.fp[keep],
                                       totals.fn[keep])
    if self.variant == panoptic_quality.DEEPLAB2:
      return panoptic_quality.summarize_deeplab2(subset, self._class_ids, self._is_thing)
    return panoptic_quality.summarize(subset, self._class_ids, self._is_thing)

  def summary_scalars(self, prefix: str = 'evaluation/pq/') -> Dict[str, float]:
    """Flat {name: value} for TensorBoard and logs (fractions, not percent)."""
    results = self.result()
    scalars = {}
    for group, suffix in (('All', ''), ('Things', '_thing'), ('Stuff', '_stuff')):
      for metric in ('pq', 'sq', 'rq'):
        scalars[f'{prefix}{metric.upper()}{suffix}'] = float(results[group][metric])
    if self.variant == panoptic_quality.DEEPLAB2:
      for metric in ('tp', 'fn', 'fp'):
        scalars[f'{prefix}{metric.upper()}'] = float(results['All'].get(metric, 0.0))
    return scalars

  def format_table(self) -> List[str]:
    """panopticapi's console table (All / Things / Stuff)."""
    return panoptic_quality.format_table(self.result())

  def reset_state(self) -> None:
    """Zeroes the accumulators (call in cross-replica context)."""
    for variable in (self.iou_sum, self.true_positives, self.false_positives,
                     self.false_negatives):
      variable.assign(tf.zeros_like(variable.read_value()))

  reset_states = reset_state
