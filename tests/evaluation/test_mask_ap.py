"""Tests for kmax_tf.evaluation.mask_ap (COCO mask AP through pycocotools)."""

import numpy as np
import pytest

from kmax_tf.evaluation import mask_ap

_FORMAT = dict(num_classes=4, ignore_label=0, label_divisor=100, thing_class_ids=(1, 2))


def _image():
  gt = np.full((40, 40), 300)  # Stuff class 3 everywhere...
  gt[2:12, 2:12] = 101  # ...with two class-1 instances and one class-2 instance.
  gt[20:30, 20:30] = 102
  gt[2:10, 25:35] = 201
  return gt


def test_perfect_prediction_has_ap_one():
  gt = _image()
  metric = mask_ap.MaskAP(**_FORMAT)
  probability = np.full(gt.shape + (4,), 0.25)
  metric.update_state(gt, gt, probability, np.ones(gt.shape))
  result = metric.result()
  assert result['AP_Mask'] == pytest.approx(1.0)
  assert result['AR_Mask_maxdets=100'] == pytest.approx(1.0)
  assert metric.num_gt_instances == 3


def test_hand_checked_precision_recall():
  gt = _image()
  pred = np.full(gt.shape, 300)
  pred[2:12, 2:12] = 101  # Exact match, high score.
  pred[30:38, 2:10] = 105  # Spurious class-1 instance, low score.
  # Class-1 instance 102 and the class-2 instance are missed.
  scores = np.where(pred == 101, 0.9, 0.2)
  probability = np.ones(gt.shape)  # [H, W]: per-pixel score of the predicted class.
  metric = mask_ap.MaskAP(**_FORMAT)
  metric.update_state(gt[None], pred[None], probability[None], scores[None])
  result = metric.result()
  # Class 1: recall reaches 1/2 at precision 1 -> 51 of 101 recall points; class 2: 0.
  assert result['AP_Mask_@IoU=0.5'] == pytest.approx((51 / 101 + 0.0) / 2)
  assert result['AR_Mask_maxdets=100'] == pytest.approx((0.5 + 0.0) / 2)
  assert set(metric.summary_scalars(detailed=True)) == {
      'evaluation/ap/' + name for name in mask_ap.STAT_NAMES}


def test_crowd_gt_is_not_a_miss_and_empty_gives_zeros():
  gt = _image()
  crowd = gt == 102
  pred = np.where(crowd, 300, gt)
  metric = mask_ap.MaskAP(**_FORMAT)
  metric.update_state(gt, pred, np.ones(gt.shape), np.ones(gt.shape), gt_is_crowd=crowd)
  assert metric.result()['AP_Mask'] == pytest.approx(1.0)
  empty = mask_ap.MaskAP(**_FORMAT)
  assert empty.result()['AP_Mask'] == 0.0
  with pytest.raises(ValueError, match='Shapes differ'):
    empty.update_state(gt, pred[:3], np.ones(gt.shape), np.ones(gt.shape))


def test_equal_scores_keep_deeplab2_first_appearance_order():
  # One class-1 ground-truth instance at the bottom. Two class-1 predictions with the same
  # score: a spurious one (id 105) at the top, the correct one (id 101) at the bottom.
  gt = np.full((40, 40), 300)
  gt[30:38, 2:10] = 101
  pred = np.full(gt.shape, 300)
  pred[2:10, 2:10] = 105
  pred[30:38, 2:10] = 101
  metric = mask_ap.MaskAP(**_FORMAT)
  metric.update_state(gt, pred, np.ones(gt.shape), np.full(gt.shape, 0.5))
  # DeepLab2 lists segments by tf.unique over the row-major map: 105 first. COCO keeps that
  # order among equal scores, so the ranking is FP, TP: precision 1/2 at recall 1 -> AP 0.5.
  # (By ascending id, 101 first, AP would be 1.0.)
  assert metric.result()['AP_Mask'] == pytest.approx(0.5)
  assert metric.result()['AR_Mask_maxdets=100'] == pytest.approx(1.0)
