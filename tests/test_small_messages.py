"""Three messages from the reliability issue, asserted word for word where it matters.

* after the restores of `non_finite_loss_action: "restore"` are spent, the
  error no longer advises setting `restore`;
* the predict CLI tells to pass `--overwrite` (not `overwrite=True`);
* the PQ CLI's message for a corrupt PNG names the file (not an in-memory
  `<_io.BytesIO object ...>`).
"""

import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kmax_tf import common
from kmax_tf import predict
from kmax_tf.data import dataset_descriptors
from kmax_tf.evaluation import coco_panoptic_evaluation
from kmax_tf.export import predictor as predictor_lib
from kmax_tf.export import preprocessing
from kmax_tf.export import serving
from kmax_tf.training import train_lib
from kmax_tf.training import trainer


def test_spent_restores_do_not_advise_setting_restore():
  first = trainer.NonFiniteLossError(5, ['total_loss', 'aux_loss'])
  assert "set solver_options.non_finite_loss_action='restore'" in str(first)  # Useful here...
  spent = str(train_lib._restores_spent_error(first, train_lib.MAX_NON_FINITE_RESTORES))
  # ... but not once restore is on and used up.
  assert 'set solver_options.non_finite_loss_action' not in spent
  assert (f'again after {train_lib.MAX_NON_FINITE_RESTORES} restores of the newest checkpoint '
          "(non_finite_loss_action='restore' allows") in spent
  assert spent.endswith('Lower the learning rate or enable solver_options.use_gradient_clipping.')


def _stand_in_predictor():
  """A real Predictor whose 'model' predicts class 4 (sky) everywhere."""
  descriptor = dataset_descriptors.get_dataset_descriptor('kmax_demo_panoptic')
  metadata = serving.export_metadata(descriptor, preprocessing.ResizeSpec(crop_size=(33, 33)))

  def serve(images):
    shape = tf.shape(images)[:3]
    sky = tf.fill(shape, 4)
    return {common.PRED_PANOPTIC_KEY: sky * descriptor.panoptic_label_divisor,
            common.PRED_SEMANTIC_KEY: sky, common.PRED_INSTANCE_KEY: tf.zeros(shape, tf.int32),
            common.PRED_INSTANCE_SCORES_KEY: tf.ones(shape),
            common.PRED_SEMANTIC_SCORES_KEY: tf.ones(shape)}

  return predictor_lib.Predictor(serve, metadata, source='stand-in')


def test_predict_names_the_overwrite_flag(tmp_path, capsys, monkeypatch):
  Image.new('RGB', (6, 5), (10, 20, 30)).save(tmp_path / 'photo.png')
  predictor = _stand_in_predictor()
  output = tmp_path / 'out'
  assert predict.run([str(tmp_path / 'photo.png')], predictor, str(output), 0.5, False) == (1, [])
  assert '1/1 (100.0%)' in capsys.readouterr().err  # The progress bar.
  record = json.loads((output / 'segments' / 'photo.json').read_text())
  assert [s['category_name'] for s in record['segments_info']] == ['sky']
  # The command line: the existing panoptic.json stops the run before any image.
  monkeypatch.setattr(predict, '_make_predictor', lambda: predictor)
  try:
    predict.FLAGS(['predict', f'--images={tmp_path}/photo.png', f'--output_dir={output}'])
    assert predict.main(['predict']) == 2
  finally:
    predict.FLAGS.unparse_flags()
  assert capsys.readouterr().err.strip() == (
      f'Error: {output}/panoptic.json already exists; refusing to overwrite it. Pass '
      '--overwrite to replace the outputs.')
  # Per image (the JSON gone, the image's files still there): skipped, with the same advice.
  (output / 'panoptic.json').unlink()
  written, failures = predict.run([str(tmp_path / 'photo.png')], predictor, str(output), 0.5,
                                  False)
  assert written == 0
  [(path, message)] = failures
  assert path == str(tmp_path / 'photo.png')
  assert message.endswith('already exists; refusing to overwrite it. Pass --overwrite to '
                          'replace the outputs.')
  assert 'overwrite=True' not in message
  assert f'Skipped {message}' in capsys.readouterr().err


def _pq_case(root, prediction_png: bytes):
  """One 4x6 image, one stuff segment; the prediction PNG's bytes are given."""
  categories = [{'id': 1, 'name': 'sky', 'isthing': 0}]
  for kind in ('gt', 'pred'):
    (root / kind).mkdir(parents=True)
    annotation = {'image_id': 1, 'file_name': '000001.png',
                  'segments_info': [{'id': 1, 'category_id': 1, 'iscrowd': 0, 'area': 24}]}
    (root / f'{kind}.json').write_text(json.dumps(
        {'annotations': [annotation], 'categories': categories,
         'images': [{'id': 1, 'file_name': '000001.jpg', 'height': 4, 'width': 6}]}))
  rgb = np.zeros((4, 6, 3), np.uint8)
  rgb[..., 0] = 1  # Segment id 1.
  Image.fromarray(rgb).save(root / 'gt' / '000001.png')
  (root / 'pred' / '000001.png').write_bytes(prediction_png)
  return [f'--gt_json_file={root}/gt.json', f'--gt_folder={root}/gt',
          f'--pred_json_file={root}/pred.json', f'--pred_folder={root}/pred']


@pytest.mark.parametrize('damage', ['not_a_png', 'truncated'])
def test_pq_cli_names_the_corrupt_png(tmp_path, capsys, damage):
  good = tmp_path / 'good.png'
  rgb = np.zeros((4, 6, 3), np.uint8)
  rgb[..., 0] = 1
  Image.fromarray(rgb).save(good)
  assert coco_panoptic_evaluation.main(_pq_case(tmp_path / 'ok', good.read_bytes())) == 0
  data = b'not a png at all' if damage == 'not_a_png' else good.read_bytes()[:40]
  assert coco_panoptic_evaluation.main(_pq_case(tmp_path / damage, data)) == 1
  error = capsys.readouterr().err.strip().splitlines()[-1]
  assert error.startswith(f'error: Cannot decode PNG {tmp_path / damage}/pred/000001.png: ')
  assert 'BytesIO' not in error and '<' not in error
