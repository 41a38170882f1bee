"""Session fixtures of the export tests: one tiny model, exported once by the CLI."""

import dataclasses
import io
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kmax_tf.keras_setup import keras
from tests.export import tiny_config

REPO_ROOT = tiny_config.REPO_ROOT


@dataclasses.dataclass
class ExportCase:
  config: object
  module: object            # in-process PanopticServingModule (same weights)
  checkpoint_prefix: str
  base_path: pathlib.Path
  version_dir: pathlib.Path
  export_stdout: str


def run_python(args, timeout=900, **kwargs):
  """Runs `python ARGS` in the checkout (a fresh process); returns CompletedProcess."""
  return subprocess.run([sys.executable] + [str(a) for a in args], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=timeout, **kwargs)


def override_flags():
  return [f'--config_override={override}' for override in tiny_config.OVERRIDES]


def png_bytes(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  return buffer.getvalue()


@pytest.fixture(scope='session')
def export_case(tmp_path_factory) -> ExportCase:
  from kmax_tf.export import serving
  root = tmp_path_factory.mktemp('export')
  keras.utils.set_random_seed(3)
  config = tiny_config.tiny_config()
  module = serving.build_serving_module(config, None)
  # Written like a kmax_tf training checkpoint: model items plus training state.
  training_state = dict(global_step=tf.Variable(7, dtype=tf.int64),
                        train_iterator=iter(tf.data.Dataset.range(5)))
  prefix = tf.train.Checkpoint(**module.model.checkpoint_items, **training_state).write(
      str(root / 'ckpt' / 'model'))
  base_path = root / 'models' / 'kmax'
  result = run_python(['export_model.py', f'--experiment_option_path={tiny_config.BASE_CONFIG}',
                       f'--checkpoint_path={prefix}', f'--output_path={base_path}']
                      + override_flags())
  assert result.returncode == 0, result.stderr[-3000:]
  return ExportCase(config=config, module=module, checkpoint_prefix=prefix, base_path=base_path,
                    version_dir=base_path / '1', export_stdout=result.stdout)


@pytest.fixture(scope='session')
def photos():
  """Three RGB photos of different sizes (scikit-image samples, else synthetic)."""
  try:
    from skimage import data
    return [data.astronaut()[:300, :400], data.coffee()[:300, :400], data.chelsea()]
  except ImportError:
    rng = np.random.default_rng(0)
    smooth = [np.kron(rng.integers(0, 255, (h // 10 + 1, w // 10 + 1, 3)), np.ones((10, 10, 1)))
              [:h, :w].astype(np.uint8) for h, w in ((300, 400), (300, 400), (300, 451))]
    return smooth


def reference_maps(model, image: np.ndarray, config) -> dict:
  """The in-process model evaluated on one image the way evaluation does it."""
  from kmax_tf import common
  from kmax_tf.data import preprocessing
  options = config.eval_dataset_options
  resized, padded, _ = preprocessing.preprocess_image_and_label(
      tf.constant(image), None, list(options.crop_size), label_pad_value=0, is_training=False,
      min_resize_value=list(options.min_resize_value),
      max_resize_value=list(options.max_resize_value), resize_factor=options.resize_factor or None)
  outputs = model(padded[None], training=False)
  resized_size = tf.shape(resized)[:2]
  raw_size = image.shape[:2]
  return {key: preprocessing.undo_preprocessing(outputs[key], resized_size, raw_size).numpy()[0]
          for key in (common.PRED_PANOPTIC_KEY, common.PRED_SEMANTIC_KEY,
                      common.PRED_INSTANCE_KEY)}
