"""Parity with DeepLab2's own model, run side by side (optional: needs a DeepLab2 checkout).

Set KMAX_DEEPLAB2_ROOT to a directory holding DeepLab2 as the package
`deeplab2` with its protos compiled (see tests/helpers/deeplab2_model.py);
without it these tests are skipped. They complement the reference-data parity
tests with backbones, crops, batch sizes and weights that are not in
../shared/dl2_reference:

* our model gets the weight rule with another salt, then BatchNorm statistics
  calibrated by the reference data's recipe (one deterministic training pass
  with momentum 0 on two synthetic images, residual-branch damping f = 0.1,
  output-scale edits; see ../shared/dl2_reference/README.md), so the network
  is well conditioned like a trained one (random statistics make it chaotic:
  then DeepLab2's own eager and graph outputs disagree);
* DeepLab2's model restores the checkpoint that our model writes through
  `checkpoint_items` (the checkpoint contract, in the saving direction);
* both run another image in inference and must agree like the reference tests
  demand.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf import common
from kmax_tf.config import loader
from kmax_tf.keras_setup import keras
from kmax_tf.model import builder
from tests.helpers import deeplab2_model
from tests.helpers import dl2_checkpoint
from tests.model import test_kmax_deeplab

DEEPLAB2_ROOT = os.environ.get('KMAX_DEEPLAB2_ROOT')
pytestmark = pytest.mark.skipif(
    not DEEPLAB2_ROOT, reason='set KMAX_DEEPLAB2_ROOT to a DeepLab2 checkout to run')

_SALT = 'kmax-side-by-side'
_DAMPING = 0.1  # f of the reference recipe
_NOISE_FACTOR = 4.0
# (config under configs/, manifest, crop (height, width), batch size)
CASES = {
    'coco_axial_r50': ('coco/kmax_meta_axial_r50_os32', 'coco_axial_r50', (97, 97), 2),
    'coco_convnext_tiny': ('coco/kmax_meta_convnext_tiny_os32', 'coco_convnext_tiny', (65, 97), 1),
    'cityscapes_r50': ('cityscapes/kmax_meta_r50_os32', 'cityscapes_r50', (65, 129), 1),
    'ade20k_r50': ('ade20k/kmax_meta_r50_os32', 'ade20k_r50_res641', (161, 129), 1),
}


def _images(crop, batch, seed):
  """float32 [batch, H, W, 3]: smooth colour regions plus noise, in [0, 255]."""
  rng = np.random.default_rng(seed)
  height, width = crop
  yy, xx = np.mgrid[:height, :width] / max(height, width)
  images = []
  for _ in range(batch):
    centres = rng.uniform(0, 1, (8, 2))
    colours = rng.uniform(0, 255, (8, 3))
    distances = (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2
    nearest = distances.argmin(-1)
    images.append(colours[nearest] + rng.normal(0, 10, (height, width, 3)))
  return tf.constant(np.clip(images, 0, 255), tf.float32)


def _batch_norms(model):
  return [layer for layer in model.submodules
          if isinstance(layer, keras.layers.BatchNormalization)]


def _our_model(repo_root, config_name, manifest_name, crop, dl2_reference, directory):
  """Our model with salted rule weights and calibrated BatchNorm statistics."""
  substitutions = {name: '' for name in
                   ('EXPERIMENT_NAME', 'INIT_CHECKPOINT', 'PRETRAINED_WEIGHTS', 'TRAIN_SET',
                    'VAL_SET')}
  crop_text = f'{crop[0]},{crop[1]}'
  config = loader.load_config(
      repo_root / 'configs' / f'{config_name}.textproto', substitutions=substitutions,
      overrides=[f'train_dataset_options.crop_size={crop_text}',
                 f'eval_dataset_options.crop_size={crop_text}'])
  model = builder.build_model(config)
  zero_gamma = [bn for bn in _batch_norms(model) if not np.any(bn.gamma.numpy())]
  manifest = dl2_checkpoint.read_manifest(dl2_reference / 'manifests' / f'{manifest_name}.tsv')
  values = dl2_checkpoint.manifest_values(manifest, salt=_SALT)
  path = dl2_checkpoint.write_checkpoint(values, str(directory / 'rule'))
  tf.train.Checkpoint(**model.checkpoint_items).read(path).assert_consumed()

  # The calibration pass: deterministic (no drop path, no dropout), moving = batch statistics.
  saved = []
  for layer in model.submodules:
    for attribute in ('_drop_path_keep_prob', '_drop_path_keep_probs', 'rate'):
      if hasattr(layer, attribute) and (attribute != 'rate' or
                                        isinstance(layer, keras.layers.Dropout)):
        value = getattr(layer, attribute)
        saved.append((layer, attribute, value))
        setattr(layer, attribute, [1.0] * len(value) if isinstance(value, list) else
                (0.0 if attribute == 'rate' else 1.0))
  for bn in _batch_norms(model):
    bn.momentum = 0.0
  gammas = {bn: bn.gamma.numpy() for bn in zero_gamma}
  for bn in zero_gamma:
    bn.gamma.assign(gammas[bn] * _DAMPING)
  model(tf.concat([_images(crop, 1, seed=0), _images(crop, 1, seed=1000)], 0), training=True)
  for layer, attribute, value in saved:
    setattr(layer, attribute, value)
  for bn in zero_gamma:
    bn.gamma.assign(gammas[bn])
    bn.moving_variance.assign((bn.moving_variance + bn.epsilon) / _DAMPING**2 - bn.epsilon)
  items = model.checkpoint_items
  for bn, scale in ((items['pixel_space_mask_batch_norm'], 5.0),
                    (items['transformer_decoder']._class_embedding_projection._batch_norm, 10.0)):
    bn.moving_variance.assign(bn.moving_variance / scale**2)
  return model


@pytest.fixture(params=sorted(CASES))
def side_by_side(request, repo_root, dl2_reference, tmp_path):
  config_name, manifest_name, crop, batch = CASES[request.param]
  if 'tf_keras' not in tf.keras.__name__:
    pytest.fail('tf.keras is not tf_keras: TF_USE_LEGACY_KERAS=1 must be set before TensorFlow')
  ours = _our_model(repo_root, config_name, manifest_name, crop, dl2_reference, tmp_path)
  path = tf.train.Checkpoint(**ours.checkpoint_items).write(str(tmp_path / 'ours'))
  theirs = deeplab2_model.build_deeplab2_model(
      DEEPLAB2_ROOT, str(repo_root / 'configs' / f'{config_name}.textproto'), crop)
  tf.train.Checkpoint(**theirs.checkpoint_items).read(path).assert_consumed()
  images = _images(crop, batch, seed=1)
  theirs_graph = tf.function(lambda x: theirs(x, training=False))(images)
  return ours(images, training=False), theirs(images, training=False), theirs_graph


def test_outputs_match_deeplab2_run_side_by_side(side_by_side):
  ours, theirs, theirs_graph = side_by_side
  for key in test_kmax_deeplab.RAW_KEYS:
    error = test_kmax_deeplab.relative_error(ours[key], theirs[key].numpy())
    # Float rounding alone moves these weights' outputs by DeepLab2's own
    # eager-vs-graph difference; ours must stay within a few times that.
    noise = test_kmax_deeplab.relative_error(theirs_graph[key], theirs[key].numpy())
    assert error <= max(test_kmax_deeplab.RAW_TOLERANCE, _NOISE_FACTOR * noise), (key, error, noise)
  for key in test_kmax_deeplab.MAP_KEYS:
    agreement = np.mean(ours[key].numpy() == theirs[key].numpy())
    assert agreement >= test_kmax_deeplab.MAP_AGREEMENT, (key, agreement)
  # Several segments or classes to agree on.
  assert len(np.unique(theirs[common.PRED_SEMANTIC_KEY].numpy())) >= 2
