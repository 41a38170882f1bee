"""Tests for kmax_tf.evaluation.prediction_writers."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from kmax_tf.evaluation import coco_panoptic_evaluation as cpe
from kmax_tf.evaluation import panoptic_png
from kmax_tf.evaluation import panoptic_quality as pq
from kmax_tf.evaluation import prediction_writers as pw
from tests.evaluation import pq_test_utils

# Contiguous 0..9 (0 = VOID) -> COCO-like dataset ids.
_CATEGORY_IDS = (0, 1, 2, 3, 5, 7, 101, 102, 110, 130)
_THINGS = (1, 2, 3, 4, 5)
_FORMAT = dict(label_divisor=100, ignore_label=0, thing_class_ids=_THINGS, num_classes=10,
               dataset_category_ids=_CATEGORY_IDS)


def test_coco_round_trip_gives_label_map_pq(tmp_path):
  pairs = pq_test_utils.random_label_pairs(seed=21, count=4)
  gt_writer = pw.PanopticSubmissionWriter(str(tmp_path / 'gt'), **_FORMAT)
  pred_writer = pw.PanopticSubmissionWriter(str(tmp_path / 'pred'), **_FORMAT)
  totals = pq.PQTotals.zeros(10)
  for index, (gt, pred, _) in enumerate(pairs):
    gt_writer.add(f'{index:012d}.jpg', gt)
    annotation = pred_writer.add(f'{index:012d}.jpg', pred)
    pq.accumulate_label_maps(totals, gt, pred, num_classes=10, ignore_label=0, label_divisor=100)
  assert annotation['image_id'] == 3 and annotation['file_name'] == '000000000003.png'
  segment = annotation['segments_info'][0]
  assert set(segment) == {'id', 'category_id', 'iscrowd', 'isthing', 'area', 'bbox'}
  assert segment['category_id'] in _CATEGORY_IDS[1:]
  files = (gt_writer.write_json(), gt_writer.png_folder, pred_writer.write_json(),
           pred_writer.png_folder)
  categories = json.load(open(files[0]))['categories']
  assert [c['id'] for c in categories] == list(_CATEGORY_IDS[1:])
  assert [c['isthing'] for c in categories] == [1] * 5 + [0] * 4
  expected = pq.summarize(pq.PQTotals(totals.iou[1:], totals.tp[1:], totals.fp[1:],
                                      totals.fn[1:]),
                          list(_CATEGORY_IDS[1:]), [c in _THINGS for c in range(1, 10)])
  ours = cpe.evaluate_panoptic_files(files[0], files[2], files[1], files[3], workers=1)
  reference = pq_test_utils.panopticapi_pq(files[0], files[2], files[1], files[3])
  assert pq_test_utils.max_difference(ours, reference) == 0.0
  assert pq_test_utils.max_difference(ours, expected) < 1e-12
  # Files are not replaced silently.
  with pytest.raises(FileExistsError):
    pw.PanopticSubmissionWriter(str(tmp_path / 'gt'), **_FORMAT)


def test_segment_areas_and_boxes(tmp_path):
  panoptic = np.zeros((6, 8), np.int32)
  panoptic[1:3, 2:5] = 101
  panoptic[4:6, :] = 900
  writer = pw.PanopticSubmissionWriter(str(tmp_path), **_FORMAT)
  info = {s['category_id']: s for s in writer.add('a/b/000000000042.jpg', panoptic)[
      'segments_info']}
  assert info[1] == {'id': 1000, 'category_id': 1, 'iscrowd': 0, 'isthing': 1, 'area': 6,
                     'bbox': [2, 1, 3, 2]}
  assert info[130]['bbox'] == [0, 4, 8, 2] and info[130]['id'] == 130000
  ids = panoptic_png.decode_panoptic_png(os.path.join(writer.png_folder, '000000000042.png'))
  assert set(np.unique(ids).tolist()) == {0, 1000, 130000}
  with pytest.raises(ValueError, match='already added'):
    writer.add('000000000042.png', panoptic)
  with pytest.raises(ValueError, match='class 12 outside'):
    writer.add('7.jpg', np.full((2, 2), 1200))


def test_cityscapes_format(tmp_path):
  train_to_label = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
  writer = pw.PanopticSubmissionWriter(
      str(tmp_path), label_divisor=1000, ignore_label=255, thing_class_ids=range(11, 19),
      num_classes=19, dataset_category_ids=train_to_label, output_format='cityscapes')
  panoptic = np.full((4, 6), 0)  # road
  panoptic[0, :2] = 11 * 1000 + 1  # person 1
  panoptic[1, :2] = 11 * 1000 + 2  # person 2
  panoptic[3, 5] = 255 * 1000  # void
  annotation = writer.add('frankfurt_000000_000294_leftImg8bit.png', panoptic)
  assert annotation['image_id'] == 'frankfurt_000000_000294'
  ids = {s['id']: s['category_id'] for s in annotation['segments_info']}
  assert ids == {7: 7, 24000: 24, 24001: 24}
  decoded = panoptic_png.decode_panoptic_png(os.path.join(writer.png_folder,
                                                          'frankfurt_000000_000294.png'))
  assert decoded[3, 5] == 0 and decoded[0, 0] == 24000 and decoded[2, 2] == 7
  content = json.load(open(writer.write_json()))
  assert {c['id'] for c in content['categories']} == set(train_to_label)


def test_raw_predictions(tmp_path):
  semantic = np.array([[0, 1], [18, 255]])
  panoptic = np.array([[0, 11 * 1000 + 3], [2 * 1000, 11 * 1000 + 300]], np.int32)
  table = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33, 0)
  written = pw.write_raw_predictions(str(tmp_path), 'x/frankfurt_1_leftImg8bit.png',
                                     semantic_pred=semantic, train_id_to_eval_id=table)
  saved = np.asarray(Image.open(written['semantic']))
  np.testing.assert_array_equal(saved, [[7, 8], [33, 0]])
  with pytest.raises(ValueError, match='two_channel_numpy_array'):
    pw.write_raw_predictions(str(tmp_path), 'a.png', panoptic_pred=panoptic, label_divisor=1000)
  written = pw.write_raw_predictions(str(tmp_path), 'a.png', panoptic_pred=panoptic,
                                     label_divisor=1000, raw_panoptic_format='three_channel_png')
  rgb = np.asarray(Image.open(written['panoptic'])).astype(np.int64)
  np.testing.assert_array_equal(rgb[..., 0], [[0, 11], [2, 11]])
  np.testing.assert_array_equal(rgb[..., 1] * 256 + rgb[..., 2], [[0, 3], [0, 300]])
  written = pw.write_raw_predictions(str(tmp_path), 'b.png', panoptic_pred=panoptic,
                                     label_divisor=1000,
                                     raw_panoptic_format='two_channel_numpy_array')
  array = np.load(written['panoptic'])
  assert array.shape == (2, 2, 3)
  np.testing.assert_array_equal(array[..., 1], [[0, 3], [0, 300]])
  small = np.array([[1003, 2000]])
  written = pw.write_raw_predictions(str(tmp_path), 'c.png', panoptic_pred=small,
                                     label_divisor=1000)
  np.testing.assert_array_equal(np.asarray(Image.open(written['panoptic']))[0],
                                [[1, 3, 0], [2, 0, 0]])
  with pytest.raises(FileExistsError):
    pw.write_raw_predictions(str(tmp_path), 'c.png', panoptic_pred=small, label_divisor=1000)
  with pytest.raises(ValueError, match='Unknown raw_panoptic_format'):
    pw.write_raw_predictions(str(tmp_path), 'd.png', panoptic_pred=small, label_divisor=1000,
                             raw_panoptic_format='jpeg')


def test_cityscapes_raw_instances(tmp_path):
  table = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
  semantic = np.array([[11, 11, 13], [0, 255, 13]])
  instance = np.array([[1, 2, 5], [0, 0, 5]])
  instance_scores = np.array([[0.5, 1.0, 0.8], [0.0, 0.0, 0.4]])
  semantic_scores = np.array([[0.9, 0.6, 1.0], [1.0, 1.0, 0.5]])
  path = pw.write_cityscapes_raw_instances(
      str(tmp_path), 'lindau_000000_000019_leftImg8bit.png', semantic_pred=semantic,
      instance_pred=instance, instance_score_map=instance_scores,
      semantic_score_map=semantic_scores, thing_class_ids=range(11, 19), ignore_label=255,
      train_id_to_eval_id=table)
  lines = open(path).read().splitlines()
  stem = 'lindau_000000_000019_leftImg8bit'
  assert lines == [f'instance_masks/{stem}_class_24_instance_1.png 24 0.450000',
                   f'instance_masks/{stem}_class_24_instance_2.png 24 0.600000',
                   f'instance_masks/{stem}_class_26_instance_5.png 26 0.450000']
  mask = np.asarray(Image.open(tmp_path / 'raw_instance' / lines[2].split()[0]))
  np.testing.assert_array_equal(mask, [[0, 0, 1], [0, 0, 1]])
