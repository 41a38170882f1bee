"""Tests for kmax_tf.evaluation.panoptic_quality (numpy PQ engine)."""

import json

import numpy as np
import pytest

from kmax_tf.evaluation import panoptic_quality as pq
from tests.evaluation import pq_test_utils

_COCO = dict(num_classes=134, ignore_label=0, label_divisor=256)
_COCO_THINGS = tuple(range(1, 81))


def _official(gt, pred, num_classes=4, ignore_label=0, label_divisor=10, **crowd):
  totals = pq.PQTotals.zeros(num_classes)
  pq.accumulate_label_maps(totals, np.asarray(gt), np.asarray(pred), num_classes=num_classes,
                           ignore_label=ignore_label, label_divisor=label_divisor, **crowd)
  return totals


def test_iou_must_exceed_half():
  # GT segment 11 has 4 pixels; prediction 11 covers 2 of them plus 0 more: IoU 2/4.
  gt = [[11, 11, 11, 11]]
  totals = _official(gt, [[11, 11, 21, 21]])
  assert totals.tp[1] == 0 and totals.fn[1] == 1 and totals.fp[1] == 1
  # 3 of 4: IoU 0.75 matches.
  totals = _official(gt, [[11, 11, 11, 21]])
  assert totals.tp[1] == 1 and totals.iou[1] == 0.75 and totals.fn[1] == 0


def test_union_excludes_gt_void_pixels():
  # Prediction 11 covers the 2 GT pixels of segment 11 and 2 VOID pixels: IoU 2 / 2.
  totals = _official([[11, 11, 0, 0]], [[11, 11, 11, 11]])
  assert totals.tp[1] == 1 and totals.iou[1] == 1.0 and totals.fp[1] == 0


def test_prediction_mostly_in_void_is_not_false_positive():
  gt = [[0, 0, 0, 31, 31, 31]]
  # Prediction 21 lies 3/4 in VOID: not a false positive; 1/2 in VOID is one.
  assert _official(gt, [[21, 21, 21, 21, 0, 0]]).fp[2] == 0
  assert _official(gt, [[0, 21, 21, 21, 21, 0]]).fp[2] == 1


def test_crowd_excuses_only_its_own_category():
  gt = [[11, 11, 11, 11, 0, 0]]
  crowd = [[True, True, True, True, False, False]]
  # A class-1 prediction inside the class-1 crowd: ignored, no FN for crowd.
  totals = _official(gt, [[12, 12, 12, 0, 0, 0]], gt_is_crowd=crowd)
  assert totals.fp.sum() == 0 and totals.fn.sum() == 0 and totals.tp.sum() == 0
  # A class-2 prediction there is a false positive.
  totals = _official(gt, [[22, 22, 22, 0, 0, 0]], gt_is_crowd=crowd)
  assert totals.fp[2] == 1 and totals.fp.sum() == 1
  # Crowd carried by the ignore label (DeepLab2's treat_crowd_as_ignore) is VOID.
  totals = _official([[0, 0, 0, 0, 31, 31]], [[22, 22, 22, 0, 0, 0]],
                     gt_is_crowd=[[True] * 4 + [False] * 2])
  assert totals.fp.sum() == 0 and totals.fn[3] == 1


def test_shape_and_class_errors():
  with pytest.raises(ValueError, match='shape'):
    _official([[11, 11]], [[11, 11, 11]])
  with pytest.raises(ValueError, match='class 7 outside'):
    _official([[11, 11]], [[71, 11]])


def test_summarize_matches_panopticapi_formula_and_empty_groups():
  totals = pq.PQTotals(np.array([1.5, 0.0, 0.0]), np.array([2, 0, 0]), np.array([1, 1, 0]),
                       np.array([0, 0, 0]))
  results = pq.summarize(totals, [7, 8, 9], [True, True, True])
  assert results['per_class'][7] == {'pq': 1.5 / 2.5, 'sq': 0.75, 'rq': 2 / 2.5}
  assert results['per_class'][8] == {'pq': 0.0, 'sq': 0.0, 'rq': 0.0}
  assert results['All']['n'] == 2 and results['All']['pq'] == pytest.approx(0.3)
  assert results['Stuff'] == {'pq': 0.0, 'sq': 0.0, 'rq': 0.0, 'n': 0}
  lines = pq.format_table(results)
  assert lines[2].startswith('All') and '30.0' in lines[2]


def _dl2_pairs(dl2_reference):
  data = np.load(dl2_reference / 'pq' / 'pq_pairs.npz')
  return [(data[f'pair{i}/gt_panoptic'], data[f'pair{i}/pred_panoptic'],
           data[f'pair{i}/gt_crowd_category']) for i in range(3)], data


def test_deeplab2_variant_reproduces_deeplab2(dl2_reference):
  pairs, data = _dl2_pairs(dl2_reference)
  reference = json.loads((dl2_reference / 'pq' / 'pq_results.json').read_text())['results']
  category_ids = list(range(1, 134))
  is_thing = [c in _COCO_THINGS for c in category_ids]
  accumulated = pq.PQTotals.zeros(134)
  for i, (gt, pred, _) in enumerate(pairs):
    single = pq.PQTotals.zeros(134)
    for totals in (single, accumulated):
      pq.accumulate_label_maps_deeplab2(totals, gt, pred, **_COCO)
    result = pq.summarize_deeplab2(pq.PQTotals(single.iou[1:], single.tp[1:], single.fp[1:],
                                               single.fn[1:]), category_ids, is_thing)
    for ours, theirs in (('pq', 'PQ'), ('sq', 'SQ'), ('rq', 'RQ'), ('tp', 'TP'), ('fn', 'FN'),
                         ('fp', 'FP')):
      assert result['All'][ours] == pytest.approx(reference[f'pair{i}'][theirs], abs=2e-7)
  np.testing.assert_allclose(accumulated.iou, data['all_pairs_accumulated/per_class_iou'],
                             atol=1e-6)
  for name, ours in (('tp', accumulated.tp), ('fp', accumulated.fp), ('fn', accumulated.fn)):
    np.testing.assert_array_equal(ours, data[f'all_pairs_accumulated/per_class_{name}'])
  result = pq.summarize_deeplab2(pq.PQTotals(accumulated.iou[1:], accumulated.tp[1:],
                                             accumulated.fp[1:], accumulated.fn[1:]),
                                 category_ids, is_thing)
  for group, key in (('All', 'all_pairs_accumulated'),
                     ('Things', 'all_pairs_accumulated_derived_things'),
                     ('Stuff', 'all_pairs_accumulated_derived_stuff')):
    for metric in ('pq', 'sq', 'rq'):
      assert result[group][metric] == pytest.approx(reference[key][metric.upper()], abs=2e-7)
  assert result['All']['n'] == reference['all_pairs_accumulated_derived_all_recomputed'][
      'num_valid_classes']


def _cityscapes_like(pairs):
  """Moves the pairs to Cityscapes conventions: VOID is class 255 (outside the classes)."""
  moved = []
  for gt, pred, crowd_category in pairs:
    convert = lambda m: np.where(m // 100 == 0, 255 * 100 + m % 100, m - 100)
    moved.append((convert(gt), convert(pred), np.where(crowd_category == 0, 255,
                                                       crowd_category - 1)))
  return moved


@pytest.mark.parametrize('source,sort_keys', [('dl2', False), ('random', False),
                                              ('random', True), ('cityscapes_like', False)])
def test_label_maps_official_equals_panopticapi(tmp_path, dl2_reference, monkeypatch,
                                                source, sort_keys):
  if sort_keys:  # The np.unique path for id ranges too wide for a histogram.
    monkeypatch.setattr(pq, '_DENSE_KEY_RANGE', 1)
  if source == 'dl2':
    pairs, _ = _dl2_pairs(dl2_reference)
    label_format = dict(_COCO)
    things = _COCO_THINGS
  elif source == 'random':
    pairs = pq_test_utils.random_label_pairs(seed=12345, count=6)
    label_format = dict(num_classes=10, ignore_label=0, label_divisor=100)
    things = (1, 2, 3, 4, 5)
  else:
    pairs = _cityscapes_like(pq_test_utils.random_label_pairs(seed=777, count=4))
    label_format = dict(num_classes=9, ignore_label=255, label_divisor=100)
    things = (0, 1, 2, 3, 4)
  files = pq_test_utils.label_maps_to_coco(str(tmp_path), pairs, thing_class_ids=things,
                                           **label_format)
  reference = pq_test_utils.panopticapi_pq(*files[::2], *files[1::2])
  totals = pq.PQTotals.zeros(label_format['num_classes'])
  for gt, pred, crowd_category in pairs:
    pq.accumulate_label_maps(totals, gt, pred, gt_crowd_category=crowd_category, **label_format)
  category_ids = [c for c in range(label_format['num_classes'])
                  if c != label_format['ignore_label']]
  keep = np.asarray(category_ids)
  ours = pq.summarize(pq.PQTotals(totals.iou[keep], totals.tp[keep], totals.fp[keep],
                                  totals.fn[keep]),
                      category_ids, [c in things for c in category_ids])
  assert pq_test_utils.max_difference(ours, reference) < 1e-12
  assert ours['All']['n'] > 3
