"""Tests of the embedded synthetic demo dataset (kmax_tf.data.demo_dataset)."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from kmax_tf.data import converter_utils
from kmax_tf.data import dataset_descriptors
from kmax_tf.data import demo_dataset
from tests.data.test_build_coco_data import read_records

_SMALL = dict(num_train=8, num_val=6, size=(65, 97), seed=3, num_workers=2, progress=False)


def _all_files(root):
  root = pathlib.Path(root)
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def small_set(tmp_path_factory):
  out = tmp_path_factory.mktemp('demo_small')
  demo_dataset.generate(str(out), **_SMALL)
  return out


def test_same_seed_gives_identical_bytes(small_set, tmp_path):
  demo_dataset.generate(str(tmp_path / 'again'), **_SMALL)
  first, second = _all_files(small_set), _all_files(tmp_path / 'again')
  assert sorted(first) == sorted(second)
  assert 'train-00000-of-00001.tfrecord' in first
  assert 'coco_format/annotations/panoptic_val.json' in first
  for name in first:
    assert first[name] == second[name], name
  other = dict(_SMALL, seed=4, num_train=1)
  demo_dataset.generate(str(tmp_path / 'other'), **other)
  assert _all_files(tmp_path / 'other')['val-00000-of-00001.tfrecord'] != first[
      'val-00000-of-00001.tfrecord']


def test_val_split_does_not_depend_on_train_size(small_set, tmp_path):
  demo_dataset.generate(str(tmp_path / 'd'), **dict(_SMALL, num_train=1))
  assert ((tmp_path / 'd' / 'val-00000-of-00001.tfrecord').read_bytes()
          == (small_set / 'val-00000-of-00001.tfrecord').read_bytes())


def test_records_readable_and_labels_consistent_with_coco_copy(small_set):
  coco = small_set / 'coco_format'
  data = json.loads((coco / 'annotations' / 'panoptic_val.json').read_text())
  assert [c['id'] for c in data['categories']] == [1, 2, 3, 4, 5, 6]
  assert [c['id'] for c in data['categories'] if c['isthing']] == [1, 2, 3]
  records = read_records(small_set, 'val')
  assert len(records) == len(data['annotations']) == 6
  for record, image_info, annotation in zip(records, data['images'], data['annotations']):
    assert record['name'] + '.png' == image_info['file_name'] == annotation['file_name']
    assert record['format'] == 'png' and record['label_format'] == b'raw'
    assert record['image'].shape == (65, 97, 3)
    on_disk = np.asarray(Image.open(coco / 'val' / image_info['file_name']))
    np.testing.assert_array_equal(record['image'], on_disk)
    rgb = np.asarray(Image.open(coco / 'annotations' / 'panoptic_val' /
                                annotation['file_name'])).astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    panoptic = record['panoptic']
    covered = np.zeros(ids.shape, bool)
    seen = set()
    for segment in annotation['segments_info']:
      mask = ids == segment['id']
      assert mask.sum() == segment['area'] > 0
      covered |= mask
      values = np.unique(panoptic[mask])
      assert len(values) == 1, segment  # One panoptic id per segment...
      value = int(values[0])
      if segment['iscrowd']:
        assert segment['category_id'] == demo_dataset.DISC and value == 0  # Crowd -> void.
        continue
      assert value // 256 == segment['category_id']
      assert (value % 256 > 0) == (segment['category_id'] in demo_dataset.THING_CLASSES)
      assert value not in seen  # ... and unique per (class, instance).
      seen.add(value)
    assert (panoptic[~covered] == 0).all()
    for thing in demo_dataset.THING_CLASSES:
      instances = sorted(v % 256 for v in seen if v // 256 == thing)
      assert instances == list(range(1, len(instances) + 1))


def _scene_stats(num, split='train', size=demo_dataset.DEFAULT_SIZE):
  stats = {'crowd': 0, 'void': 0, 'overlap': 0, 'classes': set(), 'things': []}
  for index in range(num):
    scene = demo_dataset.render_scene(demo_dataset.DEFAULT_SEED, split, index, size)
    segments = scene.segments
    stats['classes'] |= {s['category_id'] for s in segments}
    stats['crowd'] += any(s['iscrowd'] for s in segments)
    stats['void'] += bool((scene.segment_ids == 0).any())
    things = [s for s in segments if s['category_id'] in demo_dataset.THING_CLASSES
              and not s['iscrowd']]
    stats['things'].append(len(things))
    # Touching / occluding things: pairs with intersecting bounding boxes.
    for i, a in enumerate(things):
      for b in things[i + 1:]:
        ax, ay, aw, ah = a['bbox']
        bx, by, bw, bh = b['bbox']
        if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
          stats['overlap'] += 1
  return stats


def test_default_scenes_have_crowd_void_overlaps_and_all_classes():
  stats = _scene_stats(40)
  assert stats['classes'] == {1, 2, 3, 4, 5, 6}
  assert 5 <= stats['crowd'] <= 25 and 10 <= stats['void'] <= 35
  assert stats['overlap'] >= 10
  assert min(stats['things']) >= 1 and 2.0 <= np.mean(stats['things']) <= 5.0


def test_images_are_textured_but_smooth():
  scene = demo_dataset.render_scene(0, 'val', 0)
  image = scene.image.astype(np.float32)
  assert scene.image.dtype == np.uint8 and scene.image.shape == (129, 129, 3)
  for segment in scene.segments:
    mask = scene.segment_ids == segment['id']
    if segment['category_id'] in (demo_dataset.SKY, demo_dataset.GRASS, demo_dataset.SAND):
      assert image[mask].std(axis=0).mean() > 4.0  # Textured, not flat.
  # Not noise: neighbouring pixels are far closer than random pixel pairs.
  neighbour = np.abs(np.diff(image, axis=1)).mean()
  random_pairs = np.abs(image.reshape(-1, 3) - np.random.default_rng(0).permutation(
      image.reshape(-1, 3))).mean()
  assert neighbour < 0.35 * random_pairs


def test_descriptor_files(small_set):
  written = dataset_descriptors.load_descriptor_file(small_set / 'kmax_demo_panoptic.json')
  assert written.splits_to_sizes == {'train': 8, 'val': 6}
  registered = dataset_descriptors.get_dataset_descriptor('kmax_demo_panoptic')
  committed = json.loads((pathlib.Path(demo_dataset.__file__).parent / 'descriptors' /
                          'kmax_demo_panoptic.json').read_text())
  assert committed == demo_dataset.descriptor_dict()
  assert registered.num_classes == 7 and registered.ignore_label == 0
  assert registered.panoptic_label_divisor == 256
  assert registered.class_has_instances_list == (1, 2, 3)
  assert registered.splits_to_sizes == {'train': 300, 'val': 60}
  assert registered.high_resolution_output_stride == 4 and registered.num_mask_slots == 32
  assert registered.use_auxiliary_semantic_decoder is True
  assert registered.transformer_decoder_drop_path_keep_prob == 1.0
  assert written.class_names == registered.class_names


def test_preview_and_refuses_to_overwrite(small_set, tmp_path):
  scenes = [demo_dataset.render_scene(0, 'val', i, (65, 97)) for i in range(4)]
  demo_dataset.save_preview(str(tmp_path / 'grid.png'), scenes, columns=2)
  grid = Image.open(tmp_path / 'grid.png')
  assert grid.size == (2 * (97 + 4), 2 * (2 * 65 + 6)) and grid.mode == 'RGB'
  with pytest.raises(converter_utils.ConversionError, match='--overwrite'):
    demo_dataset.generate(str(small_set), **_SMALL)


def test_cli(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  command = [sys.executable, '-m', 'kmax_tf.data.demo_dataset', f'--output_dir={tmp_path}',
             '--num_train=2', '--num_val=2', '--size=33,49', '--seed=5']
  result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
  assert result.returncode == 0, result.stderr
  assert 'train: 2 examples in 1 shard(s)' in result.stderr
  assert sorted(os.listdir(tmp_path)) == ['coco_format', 'kmax_demo_panoptic.json',
                                          'train-00000-of-00001.tfrecord',
                                          'val-00000-of-00001.tfrecord']
  assert read_records(tmp_path, 'train')[1]['image'].shape == (33, 49, 3)
