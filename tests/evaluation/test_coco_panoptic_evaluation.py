"""Tests for the COCO-panoptic file evaluation and its CLI (evaluation/panoptic_quality.py)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from kmax_tf import panoptic_rgb
from kmax_tf.evaluation import coco_panoptic_evaluation as cpe
from kmax_tf.evaluation import panoptic_png
from tests.evaluation import pq_test_utils
from tests.helpers import synthetic_panoptic


@pytest.fixture(scope='module')
def synthetic_case(tmp_path_factory):
  root = tmp_path_factory.mktemp('synthetic')
  return synthetic_panoptic.write_case(str(root), num_images=12, height=48, width=64, seed=7)


def _copy_case(case, destination):
  gt_json, gt_folder, pred_json, pred_folder = case
  root = os.path.dirname(gt_json)
  shutil.copytree(root, destination)
  return tuple(os.path.join(destination, os.path.relpath(p, root))
               for p in (gt_json, gt_folder, pred_json, pred_folder))


def _evaluate(case, **kwargs):
  gt_json, gt_folder, pred_json, pred_folder = case
  return cpe.evaluate_panoptic_files(gt_json, pred_json, gt_folder, pred_folder, **kwargs)


@pytest.mark.parametrize('seed', [101, 202, 303])
def test_equals_panopticapi_on_fresh_random_cases(tmp_path, seed):
  """Cases generated here (not stored): crowd, VOID, missed/split/merged/spurious."""
  case = synthetic_panoptic.write_case(str(tmp_path), num_images=8, height=40, width=56,
                                       seed=seed)
  reference = pq_test_utils.panopticapi_pq(case[0], case[2], case[1], case[3])
  ours = _evaluate(case, workers=1)
  assert pq_test_utils.max_difference(ours, reference) <= 1e-9
  # With panopticapi's chunking the float64 sums are bit-identical.
  assert pq_test_utils.max_difference(ours, reference) == 0.0
  assert ours['Things']['n'] > 0 and ours['Stuff']['n'] > 0


def test_cases_exercise_crowd_and_void(synthetic_case):
  gt = json.load(open(synthetic_case[0]))
  crowd = [s for a in gt['annotations'] for s in a['segments_info'] if s['iscrowd']]
  assert crowd, 'the synthetic GT should contain crowd segments'
  ids = panoptic_png.decode_panoptic_png(
      os.path.join(synthetic_case[1], gt['annotations'][0]['file_name']))
  assert (ids == 0).any()
  # Ignoring crowd changes the result: the crowd rules are exercised.
  tasks, category_ids, is_thing = cpe.prepare_tasks(synthetic_case[0], synthetic_case[2],
                                                    synthetic_case[1], synthetic_case[3])
  matches = cpe.compute_matches(tasks, len(category_ids))
  stripped = [cpe._ImageTask(**{**t.__dict__, 'gt_is_crowd': np.zeros_like(t.gt_is_crowd),
                                'crowd_segment_of_category': {}}) for t in tasks]
  stripped_matches = cpe.compute_matches(stripped, len(category_ids))
  counted = sum(m.fn.sum() + len(m.ious) for m in matches)
  assert counted < sum(m.fn.sum() + len(m.ious) for m in stripped_matches)


def test_workers_and_hotcoco_agree(synthetic_case):
  single = _evaluate(synthetic_case, workers=1)
  parallel = _evaluate(synthetic_case, workers=2)
  assert pq_test_utils.max_difference(single, parallel) == 0.0
  hotcoco_panoptic = pytest.importorskip('hotcoco.panoptic')
  reference = hotcoco_panoptic.pq_compute(synthetic_case[0], synthetic_case[2],
                                          synthetic_case[1], synthetic_case[3])
  for group in ('All', 'Things', 'Stuff'):
    for metric in ('pq', 'sq', 'rq'):
      assert single[group][metric] == pytest.approx(reference[group][metric], abs=1e-9)


def test_fast_and_generic_png_decoding_agree(synthetic_case):
  folder = synthetic_case[1]
  for name in sorted(os.listdir(folder))[:3]:
    path = os.path.join(folder, name)
    expected = panoptic_rgb.rgb_to_ids(np.array(Image.open(path), dtype=np.uint32))
    np.testing.assert_array_equal(panoptic_png.decode_panoptic_png(path), expected)


def test_cli_prints_table_and_writes_json(synthetic_case, tmp_path, capsys):
  output = tmp_path / 'pq.json'
  argv = [f'--gt_json_file={synthetic_case[0]}', f'--gt_folder={synthetic_case[1]}',
          f'--pred_json_file={synthetic_case[2]}', f'--pred_folder={synthetic_case[3]}',
          f'--output_json={output}', '--workers=1']
  assert cpe.main(argv) == 0
  printed = capsys.readouterr().out
  assert '|    PQ     SQ     RQ     N' in printed and 'Things' in printed
  written = json.loads(output.read_text())
  reference = pq_test_utils.panopticapi_pq(synthetic_case[0], synthetic_case[2],
                                           synthetic_case[1], synthetic_case[3])
  for group in ('All', 'Things', 'Stuff'):
    assert set(written[group]) == {'pq', 'sq', 'rq', 'n'}
    for metric in ('pq', 'sq', 'rq', 'n'):
      assert written[group][metric] == pytest.approx(reference[group][metric], abs=1e-9)
  assert set(written['per_class']) == {str(c) for c in reference['per_class']}
  for category_id, values in reference['per_class'].items():
    for metric in ('pq', 'sq', 'rq'):
      assert written['per_class'][str(category_id)][metric] == pytest.approx(values[metric],
                                                                               abs=1e-9)
  # An existing output is not replaced silently.
  assert cpe.main(argv) == 2
  assert 'exists' in capsys.readouterr().err
  assert cpe.main(argv + ['--overwrite']) == 0


def test_cli_script_runs_as_a_program(synthetic_case, repo_root):
  completed = subprocess.run(
      [sys.executable, str(repo_root / 'evaluation' / 'panoptic_quality.py'),
       f'--gt_json_file={synthetic_case[0]}', f'--pred_json_file={synthetic_case[2]}',
       f'--gt_folder={synthetic_case[1]}', f'--pred_folder={synthetic_case[3]}'],
      capture_output=True, text=True, timeout=120, cwd=str(repo_root))
  assert completed.returncode == 0, completed.stderr
  assert 'All' in completed.stdout and 'Stuff' in completed.stdout


def _rewrite_json(path, edit):
  content = json.load(open(path))
  edit(content)
  with open(path, 'w') as f:
    json.dump(content, f)


def _expect_error(case, pattern):
  with pytest.raises(ValueError, match=pattern):
    _evaluate(case, workers=1)


def test_bad_inputs_name_file_and_id(synthetic_case, tmp_path):
  case = _copy_case(synthetic_case, tmp_path / 'c1')
  _rewrite_json(case[2], lambda c: c['annotations'].pop(3))
  _expect_error(case, r'image sets differ.*image_id \[3\]')

  case = _copy_case(synthetic_case, tmp_path / 'c2')
  os.remove(os.path.join(case[3], '000000000002.png'))
  _expect_error(case, r'do not exist.*000000000002\.png')

  case = _copy_case(synthetic_case, tmp_path / 'c3')
  first = json.load(open(case[2]))['annotations'][0]['segments_info'][0]['id']
  _rewrite_json(case[2], lambda c: c['annotations'][0]['segments_info'].pop(0))
  _expect_error(case, rf'Prediction PNG .*000000000000\.png has segment id\(s\) \[{first}\]')

  case = _copy_case(synthetic_case, tmp_path / 'c4')
  _rewrite_json(case[0], lambda c: c['annotations'][1]['segments_info'].append(
      {'id': 4242, 'category_id': 1, 'iscrowd': 0, 'area': 5}))
  _expect_error(case, r'GT JSON lists segment id\(s\) \[4242\] for .*000000000001\.png')

  case = _copy_case(synthetic_case, tmp_path / 'c5')
  _rewrite_json(case[2], lambda c: c['annotations'][2]['segments_info'].append(
      dict(c['annotations'][2]['segments_info'][0])))
  _expect_error(case, r'000000000002\.png\): duplicate segment id')

  case = _copy_case(synthetic_case, tmp_path / 'c6')
  _rewrite_json(case[2], lambda c: c['annotations'][4]['segments_info'][0].update(
      category_id=999))
  _expect_error(case, r'000000000004\.png\): segment id \d+ has unknown category_id 999')

  case = _copy_case(synthetic_case, tmp_path / 'c7')
  _rewrite_json(case[2], lambda c: c['annotations'].append(dict(c['annotations'][0])))
  _expect_error(case, r'image_id 0 has more than one annotation')

  case = _copy_case(synthetic_case, tmp_path / 'c8')
  path = os.path.join(case[3], '000000000005.png')
  Image.fromarray(np.asarray(Image.open(path))[:10]).save(path)
  _expect_error(case, r'000000000005\.png is 64x48 but prediction PNG .* is 64x10')


def test_missing_json_and_folder(synthetic_case, tmp_path):
  with pytest.raises(ValueError, match='does not exist'):
    cpe.evaluate_panoptic_files(str(tmp_path / 'nope.json'), synthetic_case[2])
  with pytest.raises(ValueError, match='PNG folder .* does not exist'):
    cpe.evaluate_panoptic_files(synthetic_case[0], synthetic_case[2], str(tmp_path / 'none'),
                                synthetic_case[3])


def test_generic_decoder_gives_the_same_numbers(synthetic_case, monkeypatch):
  fast = _evaluate(synthetic_case, workers=2)
  monkeypatch.setattr(panoptic_png, '_fast_decoder', None)
  monkeypatch.setattr(panoptic_png, '_fast_decoder_ready', True)
  assert not panoptic_png.fast_decoding_available()
  assert pq_test_utils.max_difference(_evaluate(synthetic_case, workers=2), fast) == 0.0


def test_undecodable_png_is_a_clear_error(synthetic_case, tmp_path):
  case = _copy_case(synthetic_case, tmp_path / 'bad_png')
  with open(os.path.join(case[1], '000000000003.png'), 'wb') as f:
    f.write(b'not a png')
  _expect_error(case, r'Cannot decode PNG .*000000000003\.png')


def test_many_segments_per_image(tmp_path):
  """(G + 1) * (P + 1) well above 2**16: pair indices must not wrap."""
  height, width = 40, 45
  gt_ids = np.arange(1, height * width + 1).reshape(height, width) * 7
  pred_ids = np.roll(gt_ids, 1, axis=1) + 3
  pred_ids[:, :width // 2] = gt_ids[:, :width // 2]  # Half the pixels match exactly.
  categories = [{'id': 1, 'name': 'a', 'isthing': 1}, {'id': 2, 'name': 'b', 'isthing': 0}]
  for side, ids in (('gt', gt_ids), ('pred', pred_ids)):
    os.makedirs(tmp_path / side)
    Image.fromarray(panoptic_rgb.ids_to_rgb(ids)).save(tmp_path / side / 'x.png')
    segments = [{'id': int(i), 'category_id': 1 + int(i) % 2, 'iscrowd': 0, 'area': 1}
                for i in np.unique(ids)]
    with open(tmp_path / f'{side}.json', 'w') as f:
      json.dump({'annotations': [{'image_id': 1, 'file_name': 'x.png',
                                  'segments_info': segments}], 'categories': categories}, f)
  files = (str(tmp_path / 'gt.json'), str(tmp_path / 'gt'), str(tmp_path / 'pred.json'),
           str(tmp_path / 'pred'))
  reference = pq_test_utils.panopticapi_pq(files[0], files[2], files[1], files[3])
  ours = _evaluate(files, workers=1)
  assert pq_test_utils.max_difference(ours, reference) == 0.0
  assert ours['All']['n'] == 2


def _copy_to_ram(local_root, ram_root):
  import tensorflow as tf
  for folder, _, files in os.walk(local_root):
    target = ram_root + folder[len(local_root):]
    tf.io.gfile.makedirs(target)
    for name in files:
      tf.io.gfile.copy(os.path.join(folder, name), f'{target}/{name}', overwrite=True)


def test_cli_reads_and_writes_remote_paths(synthetic_case, capsys):
  """JSONs, PNG folders and the output on ram:// (as on gs://) give the local numbers."""
  import tensorflow as tf
  local_root = os.path.dirname(synthetic_case[0])
  ram_root = 'ram://pq_cli_case'
  _copy_to_ram(local_root, ram_root)
  remote = [ram_root + path[len(local_root):] for path in synthetic_case]
  output = f'{ram_root}/pq.json'
  argv = [f'--gt_json_file={remote[0]}', f'--gt_folder={remote[1]}',
          f'--pred_json_file={remote[2]}', f'--pred_folder={remote[3]}',
          f'--output_json={output}', '--workers=1']
  assert cpe.main(argv) == 0
  with tf.io.gfile.GFile(output, 'rb') as f:
    written = json.loads(f.read())
  local = cpe.results_to_json(_evaluate(synthetic_case, workers=1))
  assert written == local
  assert cpe.main(argv) == 2  # The remote output exists: not replaced silently.
  assert 'exists' in capsys.readouterr().err
  missing = [f'--gt_json_file={ram_root}/nothing.json'] + argv[1:4]
  assert cpe.main(missing) == 1
  assert f'GT JSON file {ram_root}/nothing.json does not exist' in capsys.readouterr().err
