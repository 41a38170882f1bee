"""Config validation: each bad config gets a message naming the field."""

import pathlib

import pytest

import kmax_tf
from kmax_tf.config import loader
from kmax_tf.config import validation
from kmax_tf.model import builder

REPO = pathlib.Path(__file__).resolve().parents[2]
COCO_R50 = REPO / 'configs/coco/kmax_meta_r50_os32.textproto'


def _load(**kwargs):
  return kmax_tf.load_config(COCO_R50, **kwargs)


def test_unknown_backbone_lists_valid_ones():
  with pytest.raises(loader.ConfigError) as error:
    _load(overrides=['model_options.backbone.name=kmax_resnet5O'])
  message = str(error.value)
  assert 'model_options.backbone.name' in message and "'kmax_resnet5O'" in message
  for name in builder.PIXEL_ENCODER_BUILDERS:
    assert name in message


def test_unknown_dataset_lists_registered_ones():
  with pytest.raises(loader.ConfigError) as error:
    _load(overrides=['train_dataset_options.dataset=coco_panoptik'])
  message = str(error.value)
  assert 'train_dataset_options.dataset' in message and 'coco_panoptik' in message
  assert 'coco_panoptic' in message and 'cityscapes_panoptic' in message
  assert 'ade20k_panoptic' in message


@pytest.mark.parametrize('crop, bad', [('640,640', '640'), ('641,1280', '1280'), ('641', None)])
def test_crop_sizes_kmax_cannot_use(crop, bad):
  with pytest.raises(loader.ConfigError) as error:
    _load(overrides=[f'train_dataset_options.crop_size={crop}'])
  message = str(error.value)
  assert 'train_dataset_options.crop_size' in message
  if bad:
    assert '32k+1' in message and bad in message


@pytest.mark.parametrize('mode, field', [('train', 'train_dataset_options.file_pattern'),
                                         ('eval', 'eval_dataset_options.file_pattern'),
                                         ('train_and_eval', 'train_dataset_options.file_pattern')])
def test_missing_file_patterns_for_mode(mode, field):
  config = _load(overrides=['train_dataset_options.file_pattern=',
                            'eval_dataset_options.file_pattern='])
  with pytest.raises(loader.ConfigError, match=f'--mode={mode} needs {field}'):
    validation.validate_for_mode(config, mode)


def test_unresolved_needed_placeholder_is_named(monkeypatch):
  monkeypatch.delenv('TRAIN_SET', raising=False)
  config = _load()
  with pytest.raises(loader.ConfigError) as error:
    validation.validate_for_mode(config, 'train')
  message = str(error.value)
  assert '${TRAIN_SET}' in message and 'train_dataset_options.file_pattern' in message
  # An unresolved initial_checkpoint is named too (not "not found" after the model is built).
  config = _load(substitutions={'TRAIN_SET': 'x*.tfrecord'})
  with pytest.raises(loader.ConfigError, match=r'model_options.initial_checkpoint is '
                     r"'\$\{INIT_CHECKPOINT\}', whose placeholder \$\{INIT_CHECKPOINT\} is not "
                     r'resolved. Set it with --substitution INIT_CHECKPOINT='):
    validation.validate_for_mode(config, 'train')
  config = _load(substitutions={'TRAIN_SET': 'x*.tfrecord', 'INIT_CHECKPOINT': '/ckpt'})
  validation.validate_for_mode(config, 'train')


def test_check_resolved_passes_plain_values():
  assert validation.check_resolved('/ckpt/model', 'model_options.initial_checkpoint') == (
      '/ckpt/model')


def test_bad_mode():
  with pytest.raises(loader.ConfigError, match="--mode is 'trian'"):
    validation.validate_for_mode(_load(), 'trian')


@pytest.mark.parametrize('override, field', [
    ('evaluator_options.transformer_post_processing=boxwise',
     'evaluator_options.transformer_post_processing'),
    ('trainer_options.solver_options.optimizer=lamb', 'trainer_options.solver_options.optimizer'),
    ('trainer_options.solver_options.mixed_precision_policy=fp8',
     'trainer_options.solver_options.mixed_precision_policy'),
    ('train_dataset_options.augmentations.autoaugment_policy_name=rand',
     'train_dataset_options.augmentations.autoaugment_policy_name'),
    ('model_options.max_deeplab.high_resolution_output_stride=8',
     'model_options.max_deeplab.high_resolution_output_stride'),
])
def test_bad_choices_name_the_field(override, field):
  with pytest.raises(loader.ConfigError, match=field.replace('.', r'\.')):
    _load(overrides=[override])


def test_other_meta_architecture_rejected(tmp_path):
  path = tmp_path / 'deeplab.textproto'
  path.write_text('model_options { deeplab_v3 { num_classes: 3 } }\n')
  with pytest.raises(loader.ConfigError, match='deeplab_v3'):
    kmax_tf.load_config(path)


def test_choice_lists_are_read_from_the_builders(monkeypatch):
  """A name added to a builder mapping is valid at once (no second list to update)."""
  from kmax_tf.model import post_processor
  from kmax_tf.training import learning_rate
  from kmax_tf.training import optimizer
  overrides = ['model_options.backbone.name=kmax_test_encoder',
               'trainer_options.solver_options.optimizer=test_optimizer',
               'trainer_options.solver_options.learning_policy=test_policy']
  with pytest.raises(loader.ConfigError, match='kmax_test_encoder'):
    _load(overrides=overrides)
  monkeypatch.setitem(builder.PIXEL_ENCODER_BUILDERS, 'kmax_test_encoder', None)
  monkeypatch.setitem(optimizer.OPTIMIZER_BUILDERS, 'test_optimizer', None)
  monkeypatch.setitem(learning_rate.DECAY_SCHEDULE_BUILDERS, 'test_policy', None)
  _load(overrides=overrides)
  assert validation.MODES == ('train', 'eval', 'train_and_eval', 'continuous_eval')
  assert post_processor.POST_PROCESSING_MODES == ('pixelwise', 'maskwise')
