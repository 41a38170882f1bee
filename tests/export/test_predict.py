"""`python -m kmax_tf.predict`: outputs per image, bad inputs, clear messages."""

import json

import numpy as np
import pytest
from PIL import Image

from kmax_tf.evaluation import panoptic_png
from kmax_tf.export import predictor as predictor_lib
from kmax_tf.predict import expand_image_paths
from tests.export import conftest


def test_expand_image_paths(tmp_path):
  for name in ('b.png', 'a.jpg', 'c.txt'):
    (tmp_path / name).write_bytes(b'x')
  files, unmatched = expand_image_paths([f'{tmp_path}/*.png,{tmp_path}/a.jpg',
                                         str(tmp_path), f'{tmp_path}/*.gif'])
  assert files == [str(tmp_path / 'b.png'), str(tmp_path / 'a.jpg')]
  assert unmatched == [f'{tmp_path}/*.gif']


def test_empty_glob_is_a_clear_error(tmp_path):
  result = conftest.run_python(['-m', 'kmax_tf.predict', '--saved_model=unused',
                                f'--images={tmp_path}/*.jpg', f'--output_dir={tmp_path}/out'])
  assert result.returncode == 2
  assert 'matches no image files' in result.stderr and 'no images to process' in result.stderr
  assert 'Traceback' not in result.stderr


def test_foreign_saved_model_is_a_clear_error(tmp_path):
  import tensorflow as tf
  module = tf.Module()
  module.run = tf.function(lambda x: {'y': x + 1.0},
                           input_signature=[tf.TensorSpec([None], tf.float32)])
  tf.saved_model.save(module, str(tmp_path / 'other'), signatures=module.run)
  Image.new('RGB', (8, 8)).save(tmp_path / 'a.png')
  result = conftest.run_python(['-m', 'kmax_tf.predict', f'--saved_model={tmp_path}/other',
                                f'--images={tmp_path}/a.png', f'--output_dir={tmp_path}/out'])
  assert result.returncode == 2
  assert 'not a kmax_tf panoptic export' in result.stderr and 'Traceback' not in result.stderr


@pytest.mark.slow
def test_cli_writes_coco_png_json_and_overlay_and_skips_bad_files(export_case, photos, tmp_path):
  images = tmp_path / 'images'
  images.mkdir()
  Image.fromarray(photos[2]).save(images / 'cat.jpg', quality=95)
  Image.fromarray(photos[0]).convert('L').save(images / 'gray.png')
  Image.fromarray(photos[1]).convert('RGBA').save(images / 'rgba.png')
  large = np.kron(photos[1][:60, :90], np.ones((25, 25, 1), np.uint8))   # 1500 x 2250
  Image.fromarray(large).save(images / 'large.jpg')
  (images / 'notes.jpg').write_text('not an image')
  output = tmp_path / 'out'
  result = conftest.run_python(['-m', 'kmax_tf.predict', f'--saved_model={export_case.base_path}',
                                f'--images={images}/*.jpg,{images}/*.png',
                                f'--output_dir={output}'])
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'notes.jpg: not a readable image' in result.stdout
  assert '4 of 5 images written' in result.stdout
  assert '5/5 (100.0%)' in result.stderr  # The progress bar (kmax_tf.progress, as the converters').

  predictor = predictor_lib.Predictor.from_saved_model(export_case.base_path)
  for stem, source in (('cat', images / 'cat.jpg'), ('gray', images / 'gray.png'),
                       ('rgba', images / 'rgba.png'), ('large', images / 'large.jpg')):
    record = json.loads((output / 'segments' / f'{stem}.json').read_text())
    ids = panoptic_png.decode_panoptic_png(str(output / 'panoptic' / f'{stem}.png'))
    expected = predictor(source)
    assert ids.shape == expected.panoptic.shape == (record['height'], record['width'])
    assert len(record['segments_info']) == len(expected.segments) > 0
    for info, segment in zip(record['segments_info'], expected.segments):
      # Same pixels in the COCO PNG as in the predicted panoptic map.
      np.testing.assert_array_equal(ids == info['id'], expected.panoptic == segment.id)
      assert info['category_name'] == segment.category_name
      assert info['area'] == segment.area and info['panoptic_label'] == segment.id
      assert info['score'] == pytest.approx(segment.score)
    overlay = np.asarray(Image.open(output / 'overlay' / f'{stem}.png'))
    assert overlay.shape[1] == expected.panoptic.shape[1]
    assert overlay.shape[0] > expected.panoptic.shape[0]  # legend below
  assert record['height'] == 1500 and record['width'] == 2250
  combined = json.loads((output / 'panoptic.json').read_text())
  assert sorted(a['file_name'] for a in combined['annotations']) == [
      'cat.png', 'gray.png', 'large.png', 'rgba.png']
  assert {c['name'] for c in combined['categories']} >= {'disc', 'sky'}

  # A second run into the same folder refuses to overwrite.
  again = conftest.run_python(['-m', 'kmax_tf.predict', f'--saved_model={export_case.base_path}',
                               f'--images={images}/cat.jpg', f'--output_dir={output}'])
  assert again.returncode == 2 and 'already exists' in again.stderr


@pytest.mark.slow
def test_cli_from_config_and_checkpoint(export_case, photos, tmp_path):
  from tests.export import tiny_config
  Image.fromarray(photos[0]).save(tmp_path / 'astronaut.png')
  result = conftest.run_python(
      ['-m', 'kmax_tf.predict', f'--config_file={tiny_config.BASE_CONFIG}',
       f'--checkpoint_path={export_case.checkpoint_prefix}', f'--images={tmp_path}/astronaut.png',
       f'--output_dir={tmp_path}/out'] + conftest.override_flags())
  assert result.returncode == 0, result.stderr[-3000:]
  expected = predictor_lib.Predictor.from_saved_model(export_case.version_dir)(photos[0])
  ids = panoptic_png.decode_panoptic_png(str(tmp_path / 'out' / 'panoptic' / 'astronaut.png'))
  record = json.loads((tmp_path / 'out' / 'segments' / 'astronaut.json').read_text())
  assert [info['panoptic_label'] for info in record['segments_info']] == [
      segment.id for segment in expected.segments]
  for info, segment in zip(record['segments_info'], expected.segments):
    np.testing.assert_array_equal(ids == info['id'], expected.panoptic == segment.id)
