"""Converter runs are atomic: a failed run leaves nothing, so the same command can be rerun.

Faults are real files: a truncated JPEG / PNG written by the test, an existing
shard, a descriptor that does not match.
"""

import json
import os
import shutil

import pytest
import tensorflow as tf

from kmax_tf.data import build_coco_data
from kmax_tf.data import build_coco_format_data
from kmax_tf.data import converter_utils
from kmax_tf.data import demo_dataset
from tests.data.test_build_coco_data import fake_coco  # noqa: F401  (fixture)
from tests.data.test_build_coco_data import read_records

_QUIET = ['--progress=false', '--num_workers=2']


def _truncate(path):
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  return data


@pytest.mark.parametrize('broken', ['image', 'annotation'])
def test_truncated_file_stops_the_run_and_leaves_nothing(fake_coco, tmp_path, capsys, broken):  # noqa: F811
  root, jsons = fake_coco
  second = jsons['train']['annotations'][1]['file_name']  # Of three train images.
  path = (root / 'train2017' / second.replace('.png', '.jpg') if broken == 'image'
          else root / 'annotations' / 'panoptic_train2017' / second)
  original = _truncate(path)
  out = tmp_path / 'out'
  command = [f'--coco_root={root}', f'--output_dir={out}', '--splits=val,train',
             '--num_shards=3'] + _QUIET
  with pytest.raises(converter_utils.ConversionError,
                     match=rf'{path}.*\(use --skip_corrupt to skip it\)'):
    build_coco_data.main(command)
  assert not out.exists()  # Not even val's finished shards, nor the folder.

  # With --skip_corrupt the file is skipped and reported, count and name.
  summaries = build_coco_data.main(command + ['--skip_corrupt'])
  train = summaries[1]
  assert train.skipped == {'corrupt file': [str(path)]}
  assert train.num_examples == 2 and train.num_shards == 2  # The emptied shard is dropped.
  assert 'SKIPPED 1 (corrupt file): ' + str(path) in capsys.readouterr().err
  val_shards = [f'val-0000{i}-of-00003.tfrecord' for i in range(3)]
  assert sorted(os.listdir(out)) == ['train-00000-of-00002.tfrecord',
                                     'train-00001-of-00002.tfrecord'] + val_shards
  assert second[:-4] not in [r['name'] for r in read_records(out, 'train')]

  # Repaired, the first command runs again (now replacing the shards, as asked).
  path.write_bytes(original)
  summaries = build_coco_data.main(command + ['--overwrite'])
  assert summaries[1].num_examples == 3
  assert sorted(os.listdir(out)) == ['train-00000-of-00003.tfrecord',
                                     'train-00001-of-00003.tfrecord',
                                     'train-00002-of-00003.tfrecord'] + val_shards


def test_existing_shard_is_refused_before_any_work(fake_coco, tmp_path):  # noqa: F811
  root, _ = fake_coco
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'val-00000-of-00001.tfrecord').write_bytes(b'an older shard')
  with pytest.raises(converter_utils.ConversionError,
                     match=r"1 shard\(s\) of split 'val' .*pass --overwrite"):
    build_coco_data.main([f'--coco_root={root}', f'--output_dir={out}',
                          '--splits=train,val'] + _QUIET)
  assert os.listdir(out) == ['val-00000-of-00001.tfrecord']  # train was not written either.
  assert (out / 'val-00000-of-00001.tfrecord').read_bytes() == b'an older shard'


def test_descriptor_mismatch_leaves_no_shard(tmp_path):
  demo = tmp_path / 'demo'
  demo_dataset.generate(str(demo), num_train=0, num_val=2, size=(33, 33), progress=False)
  coco = demo / 'coco_format'
  out = tmp_path / 'own'
  out.mkdir()
  descriptor = out / 'mine.json'
  values = demo_dataset.descriptor_dict()
  values.update(name='mine', class_names=['void', 'a', 'b', 'c', 'd', 'e', 'f'])
  descriptor.write_text(json.dumps(values))
  arguments = dict(image_dir=str(coco / 'val'),
                   panoptic_json=str(coco / 'annotations' / 'panoptic_val.json'),
                   panoptic_dir=None, split='val', output_dir=str(out), dataset_name='mine',
                   progress=False)
  with pytest.raises(converter_utils.ConversionError, match=r"mine.json exists with different "
                     r"\['class_names'\]"):
    build_coco_format_data.convert(**arguments)
  assert os.listdir(out) == ['mine.json']
  descriptor.unlink()
  summary, _ = build_coco_format_data.convert(**arguments)  # The same call, rerun.
  assert summary.num_examples == 2
  assert sorted(os.listdir(out)) == ['mine.json', 'val-00000-of-00001.tfrecord']


def test_demo_generator_failure_leaves_nothing(tmp_path, monkeypatch):
  out = tmp_path / 'demo'
  render = demo_dataset.render_scene

  def render_or_fail(seed, split, index, size):
    if split == 'val' and index == 1:
      raise OSError('disk full (injected)')
    return render(seed, split, index, size)

  monkeypatch.setattr(demo_dataset, 'render_scene', render_or_fail)
  with pytest.raises(OSError, match='injected'):
    demo_dataset.generate(str(out), num_train=2, num_val=2, size=(33, 33), progress=False)
  assert not out.exists()  # Not train's shards, nor coco_format/, nor the folder.
  monkeypatch.setattr(demo_dataset, 'render_scene', render)
  demo_dataset.generate(str(out), num_train=2, num_val=2, size=(33, 33), progress=False)
  assert sorted(os.listdir(out)) == ['coco_format', 'kmax_demo_panoptic.json',
                                     'train-00000-of-00001.tfrecord',
                                     'val-00000-of-00001.tfrecord']
  assert sorted(os.listdir(out / 'coco_format' / 'val')) == ['demo_val_00000.png',
                                                             'demo_val_00001.png']


def test_ram_filesystem_input_and_output(fake_coco, tmp_path, monkeypatch):  # noqa: F811
  root, _ = fake_coco
  monkeypatch.chdir(tmp_path)  # A stray local "ram:" folder would appear here.
  ram_root = 'ram://converter_runs/coco'
  for folder, _, files in os.walk(root):
    for name in files:
      local = os.path.join(folder, name)
      tf.io.gfile.makedirs(f'{ram_root}/{os.path.relpath(folder, root)}')
      tf.io.gfile.copy(local, f'{ram_root}/{os.path.relpath(local, root)}', overwrite=True)
  out = 'ram://converter_runs/out'
  summaries = build_coco_data.main([f'--coco_root={ram_root}', f'--output_dir={out}',
                                    '--splits=train,val'] + _QUIET)
  assert [s.num_examples for s in summaries] == [3, 1]
  assert sorted(tf.io.gfile.listdir(out)) == ['train-00000-of-00001.tfrecord',
                                              'val-00000-of-00001.tfrecord']
  local_out = tmp_path / 'local_out'
  build_coco_data.main([f'--coco_root={root}', f'--output_dir={local_out}',
                        '--splits=train'] + _QUIET)
  with tf.io.gfile.GFile(f'{out}/train-00000-of-00001.tfrecord', 'rb') as f:
    assert f.read() == (local_out / 'train-00000-of-00001.tfrecord').read_bytes()
  # A failing run on ram:// leaves nothing either.
  broken = f'{ram_root}/val2017/000000000500.jpg'
  tf.io.gfile.remove(broken)  # TensorFlow's ram:// 'wb' appends to an existing file.
  with tf.io.gfile.GFile(broken, 'wb') as f:
    f.write(b'\xff\xd8 not a jpeg')
  with pytest.raises(converter_utils.ConversionError, match='000000000500.jpg'):
    build_coco_data.main([f'--coco_root={ram_root}', f'--output_dir={out}_2',
                          '--splits=train,val'] + _QUIET)
  assert not tf.io.gfile.exists(f'{out}_2') or not tf.io.gfile.listdir(f'{out}_2')
  assert not os.path.exists(tmp_path / 'ram:')
  shutil.rmtree(local_out)
