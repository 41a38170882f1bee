"""DeepLab2's own kMaX-DeepLab, built from a user's DeepLab2 checkout, for side-by-side runs.

Used by the optional side-by-side parity test and by the benchmarks' baseline
rows. Nothing of DeepLab2 ships with kmax_tf: `deeplab2_root` is a directory
that contains a DeepLab2 checkout as the package `deeplab2` with its protos
compiled, e.g.

  git clone https://github.com/google-research/deeplab2 /opt/dl2/deeplab2
  python -m grpc_tools.protoc -I/opt/dl2 --python_out=/opt/dl2 /opt/dl2/deeplab2/*.proto

The model is built like DeepLab2's trainer builds it (symbolic call on the
train crop) from one of our configs (the schema is DeepLab2's).

TensorFlow must be imported with `TF_USE_LEGACY_KERAS=1` (DeepLab2 needs
Keras 2); tests/conftest.py and the benchmark scripts set it first.
"""

import os
import re
import sys
from typing import Sequence

import tensorflow as tf
from google.protobuf import text_format

from tests.helpers import dl2_checkpoint

_PLACEHOLDER = re.compile(r'\$\{[A-Za-z_][A-Za-z0-9_]*\}')


def _import_deeplab2(deeplab2_root: str):
  """(config_pb2, dataset, kmax_deeplab) modules of the DeepLab2 under deeplab2_root."""
  package = os.path.join(deeplab2_root, 'deeplab2')
  if not os.path.isfile(os.path.join(package, 'model', 'kmax_deeplab.py')):
    raise ValueError(f'--deeplab2_root={deeplab2_root}: expected a DeepLab2 checkout at '
                     f'{package} (with model/kmax_deeplab.py)')
  if not os.path.isfile(os.path.join(package, 'config_pb2.py')):
    raise ValueError(f'--deeplab2_root={deeplab2_root}: DeepLab2\'s protos are not compiled; run '
                     f'python -m grpc_tools.protoc -I{deeplab2_root} --python_out={deeplab2_root} '
                     f'{package}/*.proto')
  if 'tf_keras' not in tf.keras.__name__:
    raise RuntimeError('DeepLab2 needs Keras 2: set TF_USE_LEGACY_KERAS=1 before importing '
                       'TensorFlow')
  if deeplab2_root not in sys.path:
    sys.path.insert(0, deeplab2_root)

  from deeplab2 import config_pb2
  from deeplab2.data import dataset
  from deeplab2.model import kmax_deeplab
  return config_pb2, dataset, kmax_deeplab


def build_deeplab2_model(deeplab2_root: str, config_path: str, crop: Sequence[int]):
  """DeepLab2's KMaXDeepLab for `config_path` at `crop` (height, width), built, not restored.

  Args:
    deeplab2_root: directory holding the `deeplab2` package (protos compiled).
    config_path: an ExperimentOptions textproto (placeholders are emptied).
    crop: train/eval crop (height, width).

  Returns:
    The DeepLab2 model; `model(images, training=False)` as for ours, and
    `model.checkpoint_items` as DeepLab2's trainer checkpoints it.
  """
  config_pb2, dataset, kmax_deeplab = _import_deeplab2(deeplab2_root)
  with open(config_path) as f:
    config = text_format.Parse(_PLACEHOLDER.sub('', f.read()), config_pb2.ExperimentOptions())
  config.model_options.initial_checkpoint = ''
  config.model_options.backbone.pretrained_weights = ''
  for options in (config.train_dataset_options, config.eval_dataset_options):
    del options.crop_size[:]
    options.crop_size.extend(list(crop))
  descriptor = dataset.MAP_NAME_TO_DATASET_INFO[config.train_dataset_options.dataset]
  model = kmax_deeplab.KMaXDeepLab(config, descriptor)
  model(tf.keras.Input(list(crop) + [3]), training=False)
  return model


def restore_reference_weights(model, manifest_path: str, moving_stats_path: str) -> None:
  """Restores the reference weights (rule + calibrated statistics) into a DeepLab2 model."""
  dl2_checkpoint.restore_reference(model.checkpoint_items, manifest_path, moving_stats_path)
