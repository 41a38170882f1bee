"""Streaming semantic mean IoU, as DeepLab2's evaluator computes it.

DeepLab2 feeds `tf.keras.metrics.MeanIoU(num_classes)` with the ignore-label
pixels weighted 0. So: ignore-label GT pixels are skipped, predictions of any
class (the ignore class included) count, and the mean runs over the classes
whose union (GT + predicted - intersection) is non-zero. This class does the
same with an int64 confusion matrix in an ON_READ / SUM variable, so it merges
exactly across `tf.distribute` replicas.
"""

from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf


class MeanIoUMetric(tf.Module):
  """Streaming mIoU over contiguous semantic classes."""

  def __init__(self, num_classes: int, ignore_label: int,
               class_names: Optional[Sequence[str]] = None, name: str = 'mean_iou'):
    """Creates the metric (inside `strategy.scope()` when distributing).

    Args:
      num_classes: number of classes C; labels are 0..C-1.
      ignore_label: GT label of unlabeled pixels (may be inside [0, C), as
        COCO's 0, or outside, as Cityscapes' 255).
      class_names: optional, len C.
      name: module name.
    """
    super().__init__(name=name)
    if num_classes <= 0:
      raise ValueError(f'num_classes must be positive, got {num_classes}.')
    if class_names is not None and len(class_names) != num_classes:
      raise ValueError(f'class_names has {len(class_names)} entries, expected {num_classes}.')
    self.num_classes = num_classes
    self.ignore_label = ignore_label
    self.class_names = tuple(class_names) if class_names is not None else None
    with self.name_scope:
      self.confusion = tf.Variable(
          tf.zeros([num_classes, num_classes], tf.int64), trainable=False, name='confusion',
          synchronization=tf.VariableSynchronization.ON_READ,
          aggregation=tf.VariableAggregation.SUM)

  def update_state(self, gt_semantic, pred_semantic) -> None:
    """Adds a batch.

    Args:
      gt_semantic: int [B, H, W] (any shape), GT classes; `ignore_label` is
        skipped, as are values outside [0, C).
      pred_semantic: int, same shape, predicted classes in [0, C) (others are
        skipped).
    """
    gt = tf.reshape(tf.cast(gt_semantic, tf.int64), [-1])
    pred = tf.reshape(tf.cast(pred_semantic, tf.int64), [-1])
    valid = ((gt != self.ignore_label) & (gt >= 0) & (gt < self.num_classes) & (pred >= 0)
             & (pred < self.num_classes))
    index = tf.boolean_mask(gt * self.num_classes + pred, valid)
    counts = tf.math.unsorted_segment_sum(tf.ones_like(index), index,
                                          self.num_classes * self.num_classes)
    self.confusion.assign_add(tf.reshape(counts, [self.num_classes, self.num_classes]))

  def result(self) -> Dict:
    """{'mIoU': float, 'per_class': {class_id: IoU}} (classes with a union only)."""
    confusion = np.asarray(self.confusion.read_value(), np.float64)
    intersection = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - intersection
    valid = union > 0
    iou = np.divide(intersection, union, out=np.zeros_like(intersection), where=valid)
    per_class = {c: float(iou[c]) for c in np.flatnonzero(valid).tolist()}
    mean = float(iou[valid].mean()) if valid.any() else 0.0
    return {'mIoU': mean, 'per_class': per_class}

  def summary_scalars(self, prefix: str = 'evaluation/iou/') -> Dict[str, float]:
    """{'evaluation/iou/IoU': mIoU}, DeepLab2's summary name."""
    return {prefix + 'IoU': self.result()['mIoU']}

  def reset_state(self) -> None:
    self.confusion.assign(tf.zeros_like(self.confusion.read_value()))

  reset_states = reset_state
