"""Tests of the Cityscapes panoptic converter (kmax_tf.data.build_cityscapes_data)."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from kmax_tf.data import build_cityscapes_data
from kmax_tf.data import converter_utils
from tests.data.test_build_coco_data import read_records

_QUIET = ['--progress=false', '--num_workers=2']
# (train id, iscrowd, (top, left, height, width)) of the segments drawn in every image:
# road (0), sky (10), two persons (11), a car (13) and a crowd of cars. Row 0 stays unlabeled.
_PLAN = [(10, 0, (1, 0, 9, 40)), (0, 0, (10, 0, 20, 40)), (11, 0, (12, 3, 8, 5)),
         (11, 0, (12, 10, 8, 5)), (13, 0, (20, 20, 6, 12)), (13, 1, (4, 30, 4, 8))]


def make_cityscapes(root, split, image_ids, labeled=True):
  rng = np.random.default_rng(len(image_ids))
  annotations = []
  for image_id in image_ids:
    city = image_id.split('_')[0]
    image_dir = root / 'leftImg8bit' / split / city
    image_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(
        image_dir / f'{image_id}_leftImg8bit.png')
    if not labeled:
      continue
    ids = np.zeros((30, 40), np.int32)
    segments = []
    for k, (train_id, iscrowd, (top, left, height, width)) in enumerate(_PLAN):
      segment_id = train_id * 1000 + k + 1 if train_id >= 11 else train_id + 1
      ids[top:top + height, left:left + width] = segment_id
      segments.append({'id': segment_id, 'category_id': train_id, 'iscrowd': iscrowd})
    for segment in segments:
      segment['area'] = int((ids == segment['id']).sum())
    png_dir = root / 'gtFine' / f'cityscapes_panoptic_{split}_trainId'
    png_dir.mkdir(parents=True, exist_ok=True)
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    Image.fromarray(rgb).save(png_dir / f'{image_id}_gtFine_panoptic.png')
    annotations.append({'image_id': image_id, 'file_name': f'{image_id}_gtFine_panoptic.png',
                        'segments_info': segments})
  if labeled:
    (root / 'gtFine' / f'cityscapes_panoptic_{split}_trainId.json').write_text(
        json.dumps({'annotations': annotations, 'categories': []}))


@pytest.fixture()
def cityscapes(tmp_path):
  root = tmp_path / 'cityscapes'
  make_cityscapes(root, 'train', ['bonn_000000_000019', 'aachen_000001_000019',
                                  'aachen_000000_000019'])
  make_cityscapes(root, 'val', ['lindau_000000_000019'])
  make_cityscapes(root, 'test', ['berlin_000000_000019'], labeled=False)
  return root


def test_labels_match_hand_built_expectation(cityscapes, tmp_path):
  summaries = build_cityscapes_data.main(
      [f'--cityscapes_root={cityscapes}', f'--output_dir={tmp_path / "out"}'] + _QUIET)
  assert [(s.split, s.num_examples) for s in summaries] == [('train', 3), ('val', 1), ('test', 1)]
  assert 'the full Cityscapes train split has 2975 images' in summaries[0].format()
  records = read_records(tmp_path / 'out', 'train')
  # Sorted by city folder, then file: aachen before bonn; stored names are the image ids.
  assert [r['name'] for r in records] == ['aachen_000000_000019', 'aachen_000001_000019',
                                          'bonn_000000_000019']
  expected = np.full((30, 40), 255 * 1000)  # Unlabeled: ignore label 255, divisor 1000.
  expected[1:10, :] = 10 * 1000
  expected[10:30, :] = 0
  expected[12:20, 3:8] = 11001
  expected[12:20, 10:15] = 11002
  expected[20:26, 20:32] = 13001
  expected[4:8, 30:38] = 255 * 1000  # Crowd car -> ignore.
  for record in records:
    assert record['format'] == 'png' and (record['height'], record['width']) == (30, 40)
    np.testing.assert_array_equal(record['panoptic'], expected)
    city = record['name'].split('_')[0]
    png = cityscapes / 'leftImg8bit' / 'train' / city / f'{record["name"]}_leftImg8bit.png'
    assert record['encoded'] == png.read_bytes()
  test_record = read_records(tmp_path / 'out', 'test')[0]
  assert 'panoptic' not in test_record and 'image/segmentation/class/encoded' not in test_record[
      'keys']


def test_crowd_kept_and_panoptic_png(cityscapes, tmp_path):
  build_cityscapes_data.main([f'--cityscapes_root={cityscapes}', f'--output_dir={tmp_path}',
                              '--splits=val', '--notreat_crowd_as_ignore',
                              '--label_format=panoptic_png'] + _QUIET)
  record = read_records(tmp_path, 'val')[0]
  assert record['label_format'] == b'panoptic_png'
  rgb = np.asarray(Image.open(io.BytesIO(record['label_bytes']))).astype(np.int64)
  panoptic = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
  assert (panoptic[4:8, 30:38] == 13000).all()  # Crowd car: class 13, instance 0.
  assert panoptic[0, 0] == 255000


def test_errors_name_the_file(cityscapes, tmp_path):
  json_path = cityscapes / 'gtFine' / 'cityscapes_panoptic_val_trainId.json'
  data = json.loads(json_path.read_text())
  data['annotations'][0]['segments_info'][0]['iscrowd'] = 1  # Crowd on stuff (sky).
  json_path.write_text(json.dumps(data))
  with pytest.raises(converter_utils.ConversionError,
                     match='lindau_000000_000019_gtFine_panoptic.png: stuff segment'):
    build_cityscapes_data.main([f'--cityscapes_root={cityscapes}', f'--output_dir={tmp_path}',
                                '--splits=val'] + _QUIET)
  data['annotations'][0]['segments_info'][0].update(iscrowd=0, category_id=19)
  json_path.write_text(json.dumps(data))
  with pytest.raises(converter_utils.ConversionError, match='unknown category id 19'):
    build_cityscapes_data.main([f'--cityscapes_root={cityscapes}', f'--output_dir={tmp_path}',
                                '--splits=val'] + _QUIET)
  json_path.unlink()
  with pytest.raises(converter_utils.ConversionError, match=str(json_path)):
    build_cityscapes_data.main([f'--cityscapes_root={cityscapes}', f'--output_dir={tmp_path}',
                                '--splits=val'] + _QUIET)
