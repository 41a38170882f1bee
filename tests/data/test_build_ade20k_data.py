"""Tests of the ADE20K panoptic converter (kmax_tf.data.build_ade20k_data)."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from kmax_tf.data import build_ade20k_data
from kmax_tf.data import converter_utils
from tests.data.test_build_coco_data import read_records

_QUIET = ['--progress=false', '--num_workers=2']
# (ADE category id, iscrowd, (top, left, height, width)): wall (0 -> class 1, stuff), a "255"
# segment (-> void), two beds (7 -> class 8, a thing), a crowd of beds. Row 0 stays unlabeled.
_PLAN = [(0, 0, (1, 0, 23, 36)), (255, 0, (1, 30, 5, 6)), (7, 0, (8, 2, 6, 7)),
         (7, 0, (8, 12, 6, 7)), (7, 1, (16, 20, 5, 5))]


def make_ade20k(root, split, stems, grey_stem=None):
  rng = np.random.default_rng(7)
  folder = {'train': 'training', 'val': 'validation'}[split]
  (root / 'images' / folder).mkdir(parents=True, exist_ok=True)
  png_dir = root / f'ade20k_panoptic_{split}'
  png_dir.mkdir(parents=True, exist_ok=True)
  annotations = []
  for index, stem in enumerate(stems):
    pixels = rng.integers(0, 256, (24, 36, 3), dtype=np.uint8)
    Image.fromarray(pixels[..., 0] if stem == grey_stem else pixels).save(
        root / 'images' / folder / f'{stem}.jpg')
    ids = np.zeros((24, 36), np.int32)
    segments = []
    for k, (category, iscrowd, (top, left, height, width)) in enumerate(_PLAN):
      segment_id = 1000 * (k + 1) + index
      ids[top:top + height, left:left + width] = segment_id
      # Areas deliberately wrong: DeepLab2 does not check them for ADE20K.
      segments.append({'id': segment_id, 'category_id': category, 'iscrowd': iscrowd,
                       'area': 1})
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    Image.fromarray(rgb).save(png_dir / f'{stem}.png')
    annotations.append({'image_id': stem, 'file_name': f'{stem}.png', 'segments_info': segments})
  (root / f'ade20k_panoptic_{split}.json').write_text(json.dumps({'annotations': annotations}))


@pytest.fixture()
def ade20k(tmp_path):
  root = tmp_path / 'ADEChallengeData2016'
  make_ade20k(root, 'train', ['ADE_train_00000002', 'ADE_train_00000001'],
              grey_stem='ADE_train_00000002')
  make_ade20k(root, 'val', ['ADE_val_00000001'])
  return root


def test_labels_match_hand_built_expectation(ade20k, tmp_path):
  summaries = build_ade20k_data.main(
      [f'--ade20k_root={ade20k}', f'--output_dir={tmp_path}'] + _QUIET)
  assert [(s.split, s.num_examples, s.num_shards) for s in summaries] == [('train', 2, 1),
                                                                         ('val', 1, 1)]
  expected = np.zeros((24, 36), np.int64)  # Unlabeled: void 0.
  expected[1:24, 0:36] = 1 * 1000  # wall
  expected[1:6, 30:36] = 0  # category 255 -> void
  expected[8:14, 2:9] = 8 * 1000 + 1  # bed: ADE category 7 -> class 8, a thing
  expected[8:14, 12:19] = 8 * 1000 + 2
  expected[16:21, 20:25] = 0  # crowd bed -> void
  records = read_records(tmp_path, 'train') + read_records(tmp_path, 'val')
  assert [r['name'] for r in records] == ['ADE_train_00000001', 'ADE_train_00000002',
                                          'ADE_val_00000001']
  for record in records:
    assert record['format'] == 'jpeg' and record['image'].shape == (24, 36, 3)
    np.testing.assert_array_equal(record['panoptic'], expected)
  grey = records[1]  # Re-encoded as an RGB JPEG.
  np.testing.assert_array_equal(grey['image'][..., 0], grey['image'][..., 2])
  assert Image.open(io.BytesIO(grey['encoded'])).mode == 'RGB'


def test_missing_png_and_skip_missing(ade20k, tmp_path):
  (ade20k / 'ade20k_panoptic_train' / 'ADE_train_00000001.png').unlink()
  with pytest.raises(converter_utils.ConversionError, match='ADE_train_00000001.png'):
    build_ade20k_data.main([f'--ade20k_root={ade20k}', f'--output_dir={tmp_path / "a"}',
                            '--splits=train'] + _QUIET)
  summaries = build_ade20k_data.main([f'--ade20k_root={ade20k}', f'--output_dir={tmp_path / "b"}',
                                      '--splits=train', '--skip_missing'] + _QUIET)
  assert summaries[0].num_examples == 1
  assert 'SKIPPED 1 (annotation PNG missing)' in summaries[0].format()
