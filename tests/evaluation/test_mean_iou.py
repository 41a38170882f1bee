"""Tests for kmax_tf.evaluation.mean_iou against DeepLab2's use of Keras MeanIoU."""

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf.evaluation import mean_iou
from kmax_tf.keras_setup import keras


@pytest.mark.parametrize('ignore_label', [0, 255])
def test_equals_deeplab2_weighted_keras_mean_iou(ignore_label):
  rng = np.random.default_rng(3)
  num_classes = 6
  gt = rng.integers(0, num_classes, size=(3, 20, 24))
  gt[rng.random(gt.shape) < 0.2] = ignore_label
  pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, num_classes, size=gt.shape))
  pred = np.where(pred >= num_classes, 1, pred)
  metric = mean_iou.MeanIoUMetric(num_classes, ignore_label)
  metric.update_state(gt[:2], pred[:2])
  tf.function(metric.update_state)(tf.constant(gt[2:]), tf.constant(pred[2:]))
  # DeepLab2: MeanIoU(num_classes) with ignore pixels mapped to 0 and weighted 0.
  keras_metric = keras.metrics.MeanIoU(num_classes)
  ignored = gt == ignore_label
  keras_metric.update_state(np.where(ignored, 0, gt), pred, np.where(ignored, 0.0, 1.0))
  assert metric.result()['mIoU'] == pytest.approx(float(keras_metric.result()), abs=1e-6)
  assert metric.summary_scalars() == {'evaluation/iou/IoU': metric.result()['mIoU']}
  metric.reset_state()
  assert metric.result() == {'mIoU': 0.0, 'per_class': {}}


def test_hand_checked_values():
  metric = mean_iou.MeanIoUMetric(3, ignore_label=255)
  metric.update_state([[0, 0, 1, 1, 255]], [[0, 1, 1, 1, 2]])
  # Class 0: 1 / 2; class 1: 2 / 3; class 2: no GT, no counted prediction.
  result = metric.result()
  assert result['per_class'] == pytest.approx({0: 0.5, 1: 2 / 3})
  assert result['mIoU'] == pytest.approx((0.5 + 2 / 3) / 2)
