"""Checkpoint contract: every released kMaX config builds DeepLab2's exact key set.

For each config under configs/, the model from `build_model` must have a
checkpoint (`tf.train.Checkpoint(**model.checkpoint_items)`) whose keys, shapes
and dtypes are exactly those of the DeepLab2 manifest, and trainable /
non-trainable parameter counts equal to the reference README's table. Models
are built at a 65x65 crop: variable shapes do not depend on the crop (the
reference README verified this for R50 and ConvNeXt-T).

ADE20K ConvNeXt-L at 641 has no manifest: DeepLab2's config does not parse at
the reference commit. Its key set must equal the res1281 one (it differs only
in crop, resize and sample_k).
"""

import gc
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf.config import loader
from kmax_tf.keras_setup import keras
from kmax_tf.model import builder
from kmax_tf.model import checkpoint_loading
from tests.helpers import dl2_checkpoint

CROP = 65
PLACEHOLDERS = {'EXPERIMENT_NAME': 'manifest_test', 'INIT_CHECKPOINT': '',
                'PRETRAINED_WEIGHTS': '', 'TRAIN_SET': '', 'VAL_SET': ''}

# (config under configs/, manifest, trainable, non-trainable) - the last two from
# the reference README's manifest table.
CASES = [
    ('coco/kmax_meta_r50_os32', 'coco_r50', 72_436_862, 213_934),
    ('coco/kmax_meta_axial_r50_os32', 'coco_axial_r50', 90_272_254, 305_198),
    ('coco/kmax_meta_convnext_tiny_os32', 'coco_convnext_tiny', 67_265_502, 164_910),
    ('coco/kmax_meta_convnext_small_os32', 'coco_convnext_small', 88_900_062, 164_910),
    ('coco/kmax_meta_convnext_base_os32', 'coco_convnext_base', 129_747_390, 164_910),
    ('coco/kmax_meta_convnext_large_os32', 'coco_convnext_large', 243_882_366, 164_910),
    ('cityscapes/kmax_meta_r50_os32', 'cityscapes_r50', 56_986_125, 212_526),
    ('cityscapes/kmax_meta_axial_r50_os32', 'cityscapes_axial_r50', 74_823_693, 303_790),
    ('cityscapes/kmax_meta_convnext_tiny_os32', 'cityscapes_convnext_tiny', 60_981_933, 160_942),
    ('cityscapes/kmax_meta_convnext_small_os32', 'cityscapes_convnext_small', 82_616_493,
     160_942),
    # Base/large: without a semantic decoder (Cityscapes), the semantic head's
    # depthwise BN sees the backbone's last stage, so its moving statistics
    # grow with the backbone width (2 x (1024 - 768) = 512 more for base).
    ('cityscapes/kmax_meta_convnext_base_os32', 'cityscapes_convnext_base', 121_631_693,
     161_454),
    ('cityscapes/kmax_meta_convnext_large_os32', 'cityscapes_convnext_large', 232_102_413,
     162_478),
    ('ade20k/kmax_meta_r50_os32', 'ade20k_r50_res641', 72_471_814, 213_934),
    ('ade20k/kmax_meta_r50_os32_res1281', 'ade20k_r50_res1281', 72_471_814, 213_934),
    ('ade20k/kmax_meta_convnext_large_os32_res1281', 'ade20k_convnext_large_res1281',
     243_917_318, 164_910),
    # No manifest of its own (see the module docstring).
    ('ade20k/kmax_meta_convnext_large_os32', 'ade20k_convnext_large_res1281', 243_917_318,
     164_910),
]
# Run by default (about 30 s each here); the others are marked slow to keep the
# default suite short. `pytest -m slow tests/model/test_manifests.py` runs the rest.
_DEFAULT_RUN = ('coco/kmax_meta_convnext_tiny_os32', 'cityscapes/kmax_meta_convnext_tiny_os32',
                'coco/kmax_meta_axial_r50_os32', 'cityscapes/kmax_meta_r50_os32',
                'ade20k/kmax_meta_r50_os32', 'ade20k/kmax_meta_convnext_large_os32')


def config_path(repo_root: pathlib.Path, name: str) -> pathlib.Path:
  dataset, config_name = name.split('/')
  for candidate in (repo_root / 'configs' / dataset / f'{config_name}.textproto',
                    repo_root / 'configs' / dataset / 'kmax_deeplab' / f'{config_name}.textproto'):
    if candidate.is_file():
      return candidate
  pytest.fail(f'config {name} not found under {repo_root / "configs"}')


def load_small_crop_config(repo_root, name, crop=CROP):
  config = loader.load_config(config_path(repo_root, name), substitutions=PLACEHOLDERS)
  for options in (config.train_dataset_options, config.eval_dataset_options):
    options.crop_size[:] = [crop, crop]
  config.model_options.ClearField('initial_checkpoint')
  config.model_options.backbone.ClearField('pretrained_weights')
  return config


def model_variables(model):
  return checkpoint_loading.object_graph_variables(tf.train.Checkpoint(**model.checkpoint_items))


def _params(ws):
  return sum(int(np.prod(w.shape)) for w in ws)


@pytest.mark.parametrize(
    'config_name,manifest_name,trainable,non_trainable',
    [pytest.param(*case, id=case[0].replace('/', ':'),
                  marks=[] if case[0] in _DEFAULT_RUN else [pytest.mark.slow])
     for case in CASES])
def test_config_builds_manifest_key_set(config_name, manifest_name, trainable, non_trainable,
                                        repo_root, dl2_reference):
  keras.backend.clear_session()
  config = load_small_crop_config(repo_root, config_name)
  model = builder.build_model(config)
  variables = model_variables(model)
  manifest = {key: (shape, dtype) for key, shape, dtype in dl2_checkpoint.read_manifest(
      dl2_reference / 'manifests' / f'{manifest_name}.tsv')}
  got = {key: (tuple(v.shape.as_list()), v.dtype.name) for key, v in variables.items()}

  missing = sorted(set(manifest) - set(got))
  unexpected = sorted(set(got) - set(manifest))
  mismatched = sorted(k for k in set(got) & set(manifest) if got[k] != manifest[k])
  assert not (missing or unexpected or mismatched), (
      f'{config_name} vs {manifest_name}: {len(missing)} missing {missing[:10]}, '
      f'{len(unexpected)} unexpected {unexpected[:10]}, {len(mismatched)} mismatched '
      f'{[(k, got[k], manifest[k]) for k in mismatched[:10]]}')
  assert (_params(model.trainable_weights), _params(model.non_trainable_weights)) == (
      trainable, non_trainable)
  # Every model weight is in the checkpoint (nothing would silently stay at its init).
  assert len(model.weights) == len(variables)

  del model, variables
  keras.backend.clear_session()
  gc.collect()
