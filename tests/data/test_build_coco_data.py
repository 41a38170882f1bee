"""Tests of the COCO panoptic converter (kmax_tf.data.build_coco_data)."""

import glob
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kmax_tf.data import build_coco_data
from kmax_tf.data import converter_utils
from kmax_tf.data import label_codec

_QUIET = ['--progress=false', '--num_workers=2']


def read_records(output_dir, split):
  """All records of a split in shard order, as plain python / numpy values."""
  records = []
  for path in sorted(glob.glob(os.path.join(output_dir, f'{split}-*.tfrecord'))):
    for serialized in tf.data.TFRecordDataset(path):
      feature = tf.train.Example.FromString(serialized.numpy()).features.feature
      height = feature['image/height'].int64_list.value[0]
      width = feature['image/width'].int64_list.value[0]
      record = {
          'keys': sorted(feature.keys()),
          'name': feature['image/filename'].bytes_list.value[0].decode(),
          'format': feature['image/format'].bytes_list.value[0].decode(),
          'height': height, 'width': width,
          'channels': feature['image/channels'].int64_list.value[0],
          'encoded': feature['image/encoded'].bytes_list.value[0],
          'image': tf.io.decode_image(feature['image/encoded'].bytes_list.value[0],
                                      channels=3).numpy(),
      }
      if 'image/segmentation/class/encoded' in feature:
        label = feature['image/segmentation/class/encoded'].bytes_list.value[0]
        record['label_format'] = feature['image/segmentation/class/format'].bytes_list.value[0]
        record['label_bytes'] = label
        if record['label_format'] == b'raw':
          record['panoptic'] = np.frombuffer(label, '<i4').reshape(height, width)
      records.append(record)
  return records


# --- DeepLab2 reference ------------------------------------------------------------------------


def test_matches_deeplab2_reference_records(dl2_reference, tmp_path):
  fake_coco = dl2_reference / 'data' / 'fake_coco'
  build_coco_data.main([f'--coco_root={fake_coco}', f'--output_dir={tmp_path}'] + _QUIET)
  reference_dir = dl2_reference / 'data' / 'tfrecord'
  for split, count in (('train', 4), ('val', 2)):
    ours, theirs = read_records(tmp_path, split), read_records(reference_dir, split)
    assert len(ours) == len(theirs) == count
    for mine, ref in zip(ours, theirs):
      assert mine['keys'] == ref['keys']
      for key in ('name', 'format', 'height', 'width', 'channels', 'label_format'):
        assert mine[key] == ref[key], (mine['name'], key)
      # DeepLab2 passes RGB JPEG bytes through unchanged; so do we.
      assert mine['encoded'] == ref['encoded']
      np.testing.assert_array_equal(mine['image'], ref['image'])
      np.testing.assert_array_equal(mine['panoptic'], ref['panoptic'])
  # The reference has crowd pixels; they are void in both.
  val_json = json.loads((fake_coco / 'annotations' / 'panoptic_val2017.json').read_text())
  assert any(s['iscrowd'] for a in val_json['annotations'] for s in a['segments_info'])


# --- A fake COCO set generated here -------------------------------------------------------------


def _coco_contiguous_ids(dl2_reference):
  """COCO category id -> contiguous id, from the 133 categories of the reference JSON."""
  data = json.loads((dl2_reference / 'data' / 'fake_coco' / 'annotations' /
                     'panoptic_val2017.json').read_text())
  ids = sorted(c['id'] for c in data['categories'])
  assert len(ids) == 133
  return {category: index + 1 for index, category in enumerate(ids)}


# (category id, iscrowd) of the segments drawn in each fake image: things 1 person, 3 car,
# 18 dog; stuff 184 (tree-merged), 187 (sky-other-merged).
_SEGMENT_PLAN = [(187, 0), (184, 0), (1, 0), (1, 0), (3, 0), (18, 0), (1, 1)]


def make_fake_coco(root, split, sizes, seed=0, grey_index=None):
  """Writes a COCO-panoptic split: JPEGs, RGB id PNGs and the JSON. Returns the JSON dict."""
  rng = np.random.default_rng(seed)
  image_dir = root / f'{split}2017'
  png_dir = root / 'annotations' / f'panoptic_{split}2017'
  image_dir.mkdir(parents=True, exist_ok=True)
  png_dir.mkdir(parents=True, exist_ok=True)
  images, annotations = [], []
  for index, (height, width) in enumerate(sizes):
    image_id = 500 + index
    stem = f'{image_id:012d}'
    ids = np.zeros((height, width), np.int32)
    segments = []
    band = height // 3
    for k, (category, iscrowd) in enumerate(_SEGMENT_PLAN):
      segment_id = int(rng.integers(1, 2**24))
      if k == 0:
        ids[:band] = segment_id
      elif k == 1:
        ids[band:height - 6] = segment_id  # Bottom 6 rows stay unlabeled (0).
      else:
        top, left = int(rng.integers(0, height - 16 - k)), int(rng.integers(0, width - 12))
        ids[top:top + 10 + k, left:left + 12] = segment_id
      segments.append({'id': segment_id, 'category_id': category, 'iscrowd': iscrowd})
    for segment in segments:
      segment['area'] = int((ids == segment['id']).sum())
    segments = [s for s in segments if s['area'] > 0]
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    Image.fromarray(rgb).save(png_dir / f'{stem}.png')
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    if index == grey_index:
      Image.fromarray(pixels[..., 0]).save(image_dir / f'{stem}.jpg', quality=95)
    else:
      Image.fromarray(pixels).save(image_dir / f'{stem}.jpg', quality=95)
    images.append({'id': image_id, 'file_name': f'{stem}.jpg', 'height': height, 'width': width})
    annotations.append({'image_id': image_id, 'file_name': f'{stem}.png',
                        'segments_info': segments})
  data = {'images': images, 'annotations': annotations,
          'categories': [{'id': c, 'name': str(c), 'isthing': int(c < 92)}
                         for c in (1, 3, 18, 184, 187)]}
  (root / 'annotations' / f'panoptic_{split}2017.json').write_text(json.dumps(data))
  return data


def expected_panoptic(png_path, segments, contiguous, treat_crowd_as_ignore=True):
  """The DeepLab2 label written out by hand from the decoded PNG."""
  rgb = np.asarray(Image.open(png_path)).astype(np.int64)
  ids = rgb[..., 0] + rgb[..., 1] * 256 + rgb[..., 2] * 65536
  panoptic = np.zeros(ids.shape, np.int64)
  next_instance = {}
  for segment in segments:
    class_id = contiguous[segment['category_id']]
    mask = ids == segment['id']
    if class_id <= 80 and segment['iscrowd']:
      panoptic[mask] = 0 if treat_crowd_as_ignore else class_id * 256
      continue
    if class_id <= 80:
      next_instance[class_id] = next_instance.get(class_id, 0) + 1
      panoptic[mask] = class_id * 256 + next_instance[class_id]
    else:
      panoptic[mask] = class_id * 256
  return panoptic


@pytest.fixture()
def fake_coco(tmp_path):
  root = tmp_path / 'coco'
  train = make_fake_coco(root, 'train', [(40, 52), (33, 33), (57, 45)], seed=1, grey_index=1)
  val = make_fake_coco(root, 'val', [(35, 48)], seed=2)
  return root, {'train': train, 'val': val}


def test_generated_set_against_decoded_pngs(dl2_reference, fake_coco, tmp_path):
  root, jsons = fake_coco
  contiguous = _coco_contiguous_ids(dl2_reference)
  assert (contiguous[1], contiguous[3], contiguous[18]) == (1, 3, 17)
  assert contiguous[184] > 80 and contiguous[187] > 80
  out = tmp_path / 'out'
  summaries = build_coco_data.main([f'--coco_root={root}', f'--output_dir={out}'] + _QUIET)
  assert [s.split for s in summaries] == ['train', 'val']
  assert summaries[0].counts['crowd_segments'] == 3
  for split, data in jsons.items():
    records = read_records(out, split)
    assert [r['name'] for r in records] == [a['file_name'][:-4] for a in data['annotations']]
    for record, image_info, annotation in zip(records, data['images'], data['annotations']):
      assert (record['height'], record['width']) == (image_info['height'], image_info['width'])
      assert record['label_format'] == b'raw'
      png = root / 'annotations' / f'panoptic_{split}2017' / annotation['file_name']
      want = expected_panoptic(png, annotation['segments_info'], contiguous)
      np.testing.assert_array_equal(record['panoptic'], want)
      assert (record['panoptic'][-6:] == 0).all()  # The unlabeled rows.
      jpeg = (root / f'{split}2017' / image_info['file_name']).read_bytes()
      if Image.open(io.BytesIO(jpeg)).mode == 'RGB':
        assert record['encoded'] == jpeg
      else:  # The grey JPEG is re-encoded as RGB, like DeepLab2.
        assert record['encoded'] != jpeg
        assert record['image'].shape == (image_info['height'], image_info['width'], 3)
        np.testing.assert_array_equal(record['image'][..., 0], record['image'][..., 1])


def test_crowd_kept_when_not_ignored(fake_coco, tmp_path, dl2_reference):
  root, jsons = fake_coco
  build_coco_data.main([f'--coco_root={root}', f'--output_dir={tmp_path / "out"}',
                        '--treat_crowd_as_ignore=false', '--splits=val'] + _QUIET)
  record = read_records(tmp_path / 'out', 'val')[0]
  annotation = jsons['val']['annotations'][0]
  png = root / 'annotations' / 'panoptic_val2017' / annotation['file_name']
  want = expected_panoptic(png, annotation['segments_info'], _coco_contiguous_ids(dl2_reference),
                           treat_crowd_as_ignore=False)
  np.testing.assert_array_equal(record['panoptic'], want)
  assert (record['panoptic'] == 256).any()  # Crowd person: class 1, instance 0.


def test_panoptic_png_label_format(fake_coco, tmp_path):
  root, _ = fake_coco
  build_coco_data.main([f'--coco_root={root}', f'--output_dir={tmp_path / "raw"}'] + _QUIET)
  build_coco_data.main([f'--coco_root={root}', f'--output_dir={tmp_path / "png"}',
                        '--label_format=panoptic_png'] + _QUIET)
  for raw, png in zip(read_records(tmp_path / 'raw', 'train'),
                      read_records(tmp_path / 'png', 'train')):
    assert png['label_format'] == b'panoptic_png'
    decoded = label_codec.decode_label(png['label_bytes'], 'panoptic_png', png['height'],
                                       png['width'])
    np.testing.assert_array_equal(decoded, raw['panoptic'])
    assert len(png['label_bytes']) < len(raw['label_bytes']) / 4


def test_shard_counts(fake_coco, tmp_path):
  root, _ = fake_coco
  default = build_coco_data.main([f'--coco_root={root}', f'--output_dir={tmp_path / "a"}']
                                 + _QUIET)
  assert default[0].num_shards == 1  # A tiny set is never spread over empty shards.
  build_coco_data.main([f'--coco_root={root}', f'--output_dir={tmp_path / "b"}',
                        '--num_shards=2', '--splits=train'] + _QUIET)
  shards = sorted(os.listdir(tmp_path / 'b'))
  assert shards == ['train-00000-of-00002.tfrecord', 'train-00001-of-00002.tfrecord']
  sizes = [sum(1 for _ in tf.data.TFRecordDataset(str(tmp_path / 'b' / s))) for s in shards]
  assert sizes == [1, 2]
  assert ([r['name'] for r in read_records(tmp_path / 'b', 'train')]
          == [r['name'] for r in read_records(tmp_path / 'a', 'train')])
  small = build_coco_data.main([f'--coco_root={root}', f'--output_dir={tmp_path / "c"}',
                                '--target_shard_mb=0.000001', '--splits=train'] + _QUIET)
  assert small[0].num_shards == 3  # One image each, never an empty shard.
  assert converter_utils.choose_num_shards(118287, 1.4e6, 128 * 2**20) == 1234  # ceil(1233.8)


def _break(root, case):
  """Damages the fake COCO set; returns the file name the error must mention."""
  annotations = root / 'annotations'
  json_path = annotations / 'panoptic_train2017.json'
  data = json.loads(json_path.read_text())
  first = data['annotations'][0]
  stem = first['file_name'][:-4]
  if case == 'missing_png':
    (annotations / 'panoptic_train2017' / first['file_name']).unlink()
    return first['file_name']
  if case == 'missing_image':
    (root / 'train2017' / f'{stem}.jpg').unlink()
    return stem
  if case == 'unreadable_image':
    (root / 'train2017' / f'{stem}.jpg').write_bytes(b'not a jpeg')
    return f'{stem}.jpg'
  if case == 'image_without_annotation':
    data['annotations'] = data['annotations'][1:]
  elif case == 'unknown_category':
    first['segments_info'][2]['category_id'] = 12  # Not a COCO panoptic category.
  elif case == 'area_mismatch':
    first['segments_info'][0]['area'] += 1
  elif case == 'size_mismatch':
    png = annotations / 'panoptic_train2017' / first['file_name']
    Image.open(png).resize((7, 9), Image.NEAREST).save(png)
    return first['file_name']
  json_path.write_text(json.dumps(data))
  return stem


@pytest.mark.parametrize('case', ['missing_png', 'missing_image', 'unreadable_image',
                                  'image_without_annotation', 'unknown_category', 'area_mismatch',
                                  'size_mismatch'])
def test_bad_input_names_the_file(fake_coco, tmp_path, case):
  root, _ = fake_coco
  expected_name = _break(root, case)
  out = tmp_path / 'out'
  with pytest.raises(converter_utils.ConversionError, match=expected_name):
    build_coco_data.main([f'--coco_root={root}', f'--output_dir={out}', '--splits=train']
                         + _QUIET)
  assert not out.exists() or not os.listdir(out)  # No partial or temporary shard left.


def test_skip_missing_is_counted_and_reported(fake_coco, tmp_path, capsys):
  root, jsons = fake_coco
  missing = jsons['train']['annotations'][1]['file_name']
  (root / 'annotations' / 'panoptic_train2017' / missing).unlink()
  summaries = build_coco_data.main([f'--coco_root={root}', f'--output_dir={tmp_path / "out"}',
                                    '--skip_missing', '--splits=train'] + _QUIET)
  assert summaries[0].num_examples == 2
  assert [os.path.basename(p) for p in summaries[0].skipped['annotation PNG missing']] == [missing]
  assert 'SKIPPED 1 (annotation PNG missing)' in capsys.readouterr().err
  assert missing[:-4] not in [r['name'] for r in read_records(tmp_path / 'out', 'train')]


def test_existing_shards_need_overwrite(fake_coco, tmp_path):
  root, _ = fake_coco
  out = tmp_path / 'out'
  args = [f'--coco_root={root}', f'--output_dir={out}', '--splits=train'] + _QUIET
  build_coco_data.main(args + ['--num_shards=3'])
  with pytest.raises(converter_utils.ConversionError, match='--overwrite'):
    build_coco_data.main(args)
  build_coco_data.main(args + ['--overwrite'])
  assert sorted(os.listdir(out)) == ['train-00000-of-00001.tfrecord']  # Stale shards removed.


def test_cli_reports_errors_without_traceback(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  missing_root = tmp_path / 'no_such_coco'
  result = subprocess.run(
      [sys.executable, '-m', 'kmax_tf.data.build_coco_data', f'--coco_root={missing_root}',
       f'--output_dir={tmp_path / "out"}'], capture_output=True, text=True, env=env, timeout=300)
  assert result.returncode == 2
  assert f'error: --coco_root is not a folder: {missing_root}' in result.stderr
  assert 'Traceback' not in result.stderr


def test_progress_bar_and_worker_count_do_not_change_output(fake_coco, tmp_path, capsys):
  root, _ = fake_coco
  build_coco_data.main([f'--coco_root={root}', f'--output_dir={tmp_path / "one"}',
                        '--num_workers=1', '--splits=train'])
  err = capsys.readouterr().err
  assert 'train [' in err and '3/3 (100.0%)' in err  # Plain-text progress on stderr.
  assert 'train: 3 examples in 1 shard(s)' in err  # The summary.
  build_coco_data.main([f'--coco_root={root}', f'--output_dir={tmp_path / "three"}',
                        '--num_workers=3', '--splits=train', '--progress=false'])
  assert 'train [' not in capsys.readouterr().err
  assert ((tmp_path / 'one' / 'train-00000-of-00001.tfrecord').read_bytes()
          == (tmp_path / 'three' / 'train-00000-of-00001.tfrecord').read_bytes())


def test_failure_midway_leaves_no_shard(fake_coco, tmp_path):
  root, jsons = fake_coco
  last = sorted(a['file_name'] for a in jsons['train']['annotations'])[-1]
  (root / 'annotations' / 'panoptic_train2017' / last).write_bytes(b'broken png')
  out = tmp_path / 'out'
  with pytest.raises(converter_utils.ConversionError, match=f'cannot read .*{last}'):
    build_coco_data.main([f'--coco_root={root}', f'--output_dir={out}', '--splits=train',
                          '--num_shards=3'] + _QUIET)
  # Shards 0 and 1 were complete but are not published; the folder the run made is gone.
  assert not out.exists()
