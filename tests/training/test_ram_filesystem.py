"""train -> eval -> export -> predict with every file on TensorFlow's in-memory ram:// file system.

Stands for gs:// and other remote file systems: anything written through
`os` instead of `tf.io.gfile` would land in a local folder named "ram:" (which
the test checks is never created) or fail to be found again.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.training.test_end_to_end import TINY_CONFIG


@pytest.mark.slow
def test_train_eval_export_predict_on_ram_filesystem(tiny_setup, tmp_path, monkeypatch):
  from kmax_tf import predict
  from kmax_tf.config import loader
  from kmax_tf.export import predictor as predictor_lib
  from kmax_tf.export import serving
  from kmax_tf.training import train_lib
  monkeypatch.chdir(tmp_path)  # A stray local "ram:" folder would appear here.
  _, data, _ = tiny_setup
  root = 'ram://kmax_e2e'
  for path in data.glob('*.tfrecord'):
    tf.io.gfile.copy(str(path), f'{root}/data/{path.name}', overwrite=True)
  config = loader.parse_config_text(TINY_CONFIG, substitutions={'DATA': f'{root}/data'})
  model_dir = f'{root}/model/tiny'

  results = train_lib.run_experiment('train_and_eval', config, model_dir)
  assert results and all(np.isfinite(value) for value in results.values())
  assert tf.train.latest_checkpoint(model_dir) == f'{model_dir}/ckpt-2'
  assert tf.io.gfile.exists(f'{model_dir}/vis/predictions_step2.png')
  assert tf.io.gfile.glob(f'{model_dir}/train/events.out.tfevents.*')
  assert tf.io.gfile.glob(f'{model_dir}/eval/events.out.tfevents.*')

  # Eval alone restores the ram:// checkpoint and gives the same numbers.
  again = train_lib.run_experiment('eval', config, model_dir)
  for key, value in results.items():
    np.testing.assert_allclose(again[key], value, rtol=1e-5, atol=1e-6, err_msg=key)

  version_dir, _ = serving.export_saved_model(config, model_dir, f'{root}/export')
  assert version_dir == f'{root}/export/1'
  assert tf.io.gfile.exists(f'{version_dir}/saved_model.pb')
  assert not [name for name in tf.io.gfile.listdir(f'{root}/export') if name.startswith('.')]

  image = np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8)
  Image.fromarray(image).save(tmp_path / 'photo.png')
  predictor = predictor_lib.Predictor.from_saved_model(f'{root}/export')
  written, failures = predict.run([str(tmp_path / 'photo.png')], predictor, f'{root}/out',
                                  overlay_alpha=0.5, overwrite=False)
  assert (written, failures) == (1, [])
  for name in ('panoptic/photo.png', 'segments/photo.json', 'overlay/photo.png',
               'panoptic.json'):
    assert tf.io.gfile.exists(f'{root}/out/{name}'), name
  assert not os.path.exists(tmp_path / 'ram:')
