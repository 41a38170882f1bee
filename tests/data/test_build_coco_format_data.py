"""Tests of the generic COCO-panoptic-format converter (kmax_tf.data.build_coco_format_data)."""

import json

import numpy as np
import pytest
from PIL import Image

from kmax_tf.data import build_coco_format_data
from kmax_tf.data import converter_utils
from kmax_tf.data import dataset_descriptors
from kmax_tf.data import demo_dataset
from tests.data.test_build_coco_data import read_records

_QUIET = ['--progress=false', '--num_workers=2']


def test_demo_coco_copy_round_trips_to_demo_records(tmp_path):
  demo = tmp_path / 'demo'
  demo_dataset.generate(str(demo), num_train=1, num_val=5, size=(49, 65), seed=11,
                        progress=False)
  coco = demo / 'coco_format'
  out = tmp_path / 'out'
  build_coco_format_data.main([
      '--dataset_name=kmax_demo_panoptic', '--split=val', f'--image_dir={coco / "val"}',
      f'--panoptic_json={coco / "annotations" / "panoptic_val.json"}', f'--output_dir={out}',
      '--num_mask_slots=32', '--transformer_decoder_drop_path_keep_prob=1.0'] + _QUIET)
  ours, theirs = read_records(out, 'val'), read_records(demo, 'val')
  assert len(ours) == len(theirs) == 5
  for mine, ref in zip(ours, theirs):
    for key in ('keys', 'name', 'format', 'height', 'width', 'encoded', 'label_bytes'):
      assert mine[key] == ref[key], key
  written = json.loads((out / 'kmax_demo_panoptic.json').read_text())
  assert written == demo_dataset.descriptor_dict(num_train=0, num_val=5) | {
      'splits_to_sizes': {'val': 5}}


def _write_split(root, split, stems, category_ids):
  """A tiny COCO-format split with non-contiguous category ids; returns the JSON path."""
  (root / split).mkdir(parents=True)
  (root / f'panoptic_{split}').mkdir()
  images, annotations = [], []
  for index, stem in enumerate(stems):
    Image.fromarray(np.full((20, 30, 3), 60 + index, np.uint8)).save(root / split / f'{stem}.png')
    ids = np.zeros((20, 30), np.int32)
    ids[:10] = 7           # stuff, category_ids[2]
    ids[12:18, 2:8] = 8    # thing, category_ids[0]
    ids[12:18, 10:16] = 9  # thing, category_ids[0]
    ids[12:18, 20:26] = 300  # thing, category_ids[1]
    segments = [{'id': 7, 'category_id': category_ids[2], 'iscrowd': 0, 'area': 300},
                {'id': 8, 'category_id': category_ids[0], 'iscrowd': 0, 'area': 36},
                {'id': 9, 'category_id': category_ids[0], 'iscrowd': 0, 'area': 36},
                {'id': 300, 'category_id': category_ids[1], 'iscrowd': 0, 'area': 36}]
    rgb = np.stack([ids % 256, ids // 256, ids * 0], -1).astype(np.uint8)
    Image.fromarray(rgb).save(root / f'panoptic_{split}' / f'{stem}.png')
    images.append({'id': 100 + index, 'file_name': f'{stem}.png'})
    annotations.append({'image_id': 100 + index, 'file_name': f'{stem}.png',
                        'segments_info': segments})
  categories = [{'id': category_ids[0], 'name': 'cat', 'isthing': 1, 'color': [1, 2, 3]},
                {'id': category_ids[1], 'name': 'dog', 'isthing': 1},
                {'id': category_ids[2], 'name': 'floor', 'isthing': 0}]
  json_path = root / f'panoptic_{split}.json'
  json_path.write_text(json.dumps({'images': images, 'annotations': annotations,
                                   'categories': categories}))
  return json_path


def test_own_dataset_with_sparse_category_ids(tmp_path):
  root, out = tmp_path / 'mine', tmp_path / 'out'
  common_args = ['--dataset_name=my_data', f'--output_dir={out}', '--label_divisor=1000'] + _QUIET
  for split, stems in (('train', ['b', 'a']), ('val', ['c'])):
    json_path = _write_split(root, split, stems, category_ids=(40, 5, 17))
    build_coco_format_data.main(common_args + [
        f'--split={split}', f'--image_dir={root / split}', f'--panoptic_json={json_path}'])
  descriptor = dataset_descriptors.load_descriptor_file(out / 'my_data.json')
  assert descriptor.class_names == ('void', 'dog', 'floor', 'cat')  # Sorted by id: 5, 17, 40.
  assert descriptor.dataset_category_ids == (0, 5, 17, 40)
  assert descriptor.class_has_instances_list == (1, 3)
  assert descriptor.colormap[3] == (1, 2, 3)
  assert descriptor.splits_to_sizes == {'train': 2, 'val': 1}
  assert descriptor.panoptic_label_divisor == 1000 and descriptor.num_classes == 4
  records = read_records(out, 'train')
  assert [r['name'] for r in records] == ['a', 'b']
  panoptic = records[0]['panoptic']
  assert panoptic[0, 0] == 2000  # floor (17) -> class 2, stuff
  assert panoptic[19, 29] == 0  # unlabeled
  assert (panoptic[12, 2], panoptic[12, 10], panoptic[12, 20]) == (3001, 3002, 1001)

  other = _write_split(tmp_path / 'other', 'test', ['d'], category_ids=(41, 5, 17))
  with pytest.raises(converter_utils.ConversionError, match='my_data.json exists with different'):
    build_coco_format_data.main(common_args + [
        '--split=test', f'--image_dir={tmp_path / "other" / "test"}', f'--panoptic_json={other}'])


def test_missing_image_is_named(tmp_path):
  root = tmp_path / 'mine'
  json_path = _write_split(root, 'train', ['a', 'b'], category_ids=(1, 2, 3))
  (root / 'train' / 'b.png').unlink()
  args = ['--dataset_name=x', '--split=train', f'--image_dir={root / "train"}',
          f'--panoptic_json={json_path}'] + _QUIET
  with pytest.raises(converter_utils.ConversionError, match='image not found: .*b.png'):
    build_coco_format_data.main(args + [f'--output_dir={tmp_path / "o1"}'])
  summary, _ = build_coco_format_data.main(args + [f'--output_dir={tmp_path / "o2"}',
                                                   '--skip_missing'])
  assert summary.num_examples == 1
  assert summary.skipped == {'image missing': [str(root / 'train' / 'b.png')]}
