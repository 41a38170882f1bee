"""load_config: every shipped config, placeholders, overrides and parse errors."""

import pathlib

import pytest

import kmax_tf
from kmax_tf.config import loader

REPO = pathlib.Path(__file__).resolve().parents[2]
RELEASED_CONFIGS = {
    'coco': ['kmax_meta_r50_os32', 'kmax_meta_axial_r50_os32', 'kmax_meta_convnext_tiny_os32',
             'kmax_meta_convnext_small_os32', 'kmax_meta_convnext_base_os32',
             'kmax_meta_convnext_large_os32'],
    'cityscapes': ['kmax_meta_r50_os32', 'kmax_meta_axial_r50_os32',
                   'kmax_meta_convnext_tiny_os32', 'kmax_meta_convnext_small_os32',
                   'kmax_meta_convnext_base_os32', 'kmax_meta_convnext_large_os32'],
    'ade20k': ['kmax_meta_r50_os32', 'kmax_meta_r50_os32_res1281',
               'kmax_meta_convnext_large_os32', 'kmax_meta_convnext_large_os32_res1281'],
}
ALL_CONFIGS = sorted(str(p.relative_to(REPO)) for p in REPO.glob('configs/*/*.textproto'))


def test_every_released_config_is_shipped():
  expected = {f'configs/{d}/{n}.textproto' for d, names in RELEASED_CONFIGS.items() for n in names}
  assert expected <= set(ALL_CONFIGS)


@pytest.mark.parametrize('relative_path', ALL_CONFIGS)
def test_config_parses_and_reprints_unchanged(relative_path):
  path = REPO / relative_path
  config = kmax_tf.load_config(path)
  assert config.model_options.backbone.name.startswith('kmax_')
  # Canonical form: the file is what the config re-prints to, plus comment lines.
  body = ''.join(line for line in path.read_text().splitlines(keepends=True)
                 if not line.lstrip().startswith('#'))
  assert loader.to_text(config) == body


def test_released_values_survive_parsing():
  config = kmax_tf.load_config(REPO / 'configs/coco/kmax_meta_r50_os32.textproto')
  assert config.train_dataset_options.dataset == 'coco_panoptic'
  assert list(config.train_dataset_options.crop_size) == [1281, 1281]
  assert config.trainer_options.solver_options.adamw_weight_decay == pytest.approx(0.05)
  assert config.trainer_options.solver_options.backbone_learning_rate_multiplier == (
      pytest.approx(0.1))
  assert config.evaluator_options.maskwise_postprocessing.overlapping_threshold == (
      pytest.approx(0.8))
  assert config.model_options.max_deeplab.instance_discrimination_sample_k == 4096


def test_ade20k_convnext_large_641_drop_path_field_is_real():
  # DeepLab2's proto lacks this field, so DeepLab2 cannot parse this config.
  config = kmax_tf.load_config(REPO / 'configs/ade20k/kmax_meta_convnext_large_os32.textproto')
  max_deeplab = config.model_options.max_deeplab
  assert max_deeplab.HasField('transformer_decoder_drop_path_keep_prob')
  assert max_deeplab.transformer_decoder_drop_path_keep_prob == 1.0


def test_placeholders_from_substitutions_and_environment(monkeypatch):
  monkeypatch.setenv('VAL_SET', '/data/val-*.tfrecord')
  monkeypatch.delenv('TRAIN_SET', raising=False)
  config = kmax_tf.load_config(REPO / 'configs/coco/kmax_meta_r50_os32.textproto',
                               substitutions={'TRAIN_SET': '/data/train-*.tfrecord',
                                              'EXPERIMENT_NAME': 'exp1'})
  assert list(config.train_dataset_options.file_pattern) == ['/data/train-*.tfrecord']
  assert list(config.eval_dataset_options.file_pattern) == ['/data/val-*.tfrecord']
  assert config.experiment_name == 'exp1'
  # Substitutions win over the environment.
  config = kmax_tf.load_config(REPO / 'configs/coco/kmax_meta_r50_os32.textproto',
                               substitutions={'VAL_SET': 'mine'})
  assert list(config.eval_dataset_options.file_pattern) == ['mine']


def test_unresolved_placeholder_kept_until_needed(monkeypatch):
  monkeypatch.delenv('INIT_CHECKPOINT', raising=False)
  config = kmax_tf.load_config(REPO / 'configs/coco/kmax_meta_r50_os32.textproto')
  assert config.model_options.initial_checkpoint == '${INIT_CHECKPOINT}'
  assert loader.unresolved_placeholders(config.model_options.initial_checkpoint) == [
      'INIT_CHECKPOINT']


def test_overrides_dotted_and_textproto():
  config = kmax_tf.load_config(
      REPO / 'configs/coco/kmax_meta_r50_os32.textproto',
      overrides=['trainer_options.solver_options.base_learning_rate=0.001',
                 'train_dataset_options.crop_size=641,641',
                 'evaluator_options.save_predictions=false',
                 'train_dataset_options { batch_size: 2 }',
                 'train_dataset_options.file_pattern=${TRAIN_SET}'],
      substitutions={'TRAIN_SET': 'a*.tfrecord'})
  assert config.trainer_options.solver_options.base_learning_rate == pytest.approx(0.001)
  assert list(config.train_dataset_options.crop_size) == [641, 641]
  assert not config.evaluator_options.save_predictions
  assert config.train_dataset_options.batch_size == 2
  assert list(config.train_dataset_options.file_pattern) == ['a*.tfrecord']


@pytest.mark.parametrize('override, message', [
    ('trainer_options.solver_options.base_lr=1', "SolverOptions has no field 'base_lr'"),
    ('trainer_options.solver_options.base_learning_rate=fast', "cannot convert 'fast'"),
    ('trainer_options.solver_options=1', 'is a message'),
    ('trainer_options { nonsense: 1 }', 'no field named "nonsense"'),
])
def test_bad_override_messages(override, message):
  with pytest.raises(loader.ConfigError, match=message):
    kmax_tf.load_config(REPO / 'configs/coco/kmax_meta_r50_os32.textproto', overrides=[override])


def _write(tmp_path, text):
  path = tmp_path / 'bad.textproto'
  path.write_text(text)
  return path


def test_unknown_field_names_file_and_line(tmp_path):
  path = _write(tmp_path, 'model_options {\n  backbone {\n    nmae: "kmax_resnet50"\n  }\n}\n')
  with pytest.raises(loader.ConfigError) as error:
    kmax_tf.load_config(path)
  assert f'{path}:3:' in str(error.value)
  assert 'nmae' in str(error.value)


def test_wrong_type_names_file_and_line(tmp_path):
  path = _write(tmp_path, 'train_dataset_options {\n  batch_size: "eight"\n}\n')
  with pytest.raises(loader.ConfigError) as error:
    kmax_tf.load_config(path)
  assert f'{path}:2:' in str(error.value)
  assert 'batch_size' in str(error.value)


def test_missing_file_is_clear(tmp_path):
  with pytest.raises(loader.ConfigError, match='Cannot read config file .*nope.textproto'):
    kmax_tf.load_config(tmp_path / 'nope.textproto')


def test_parse_key_value_pairs_is_the_one_substitution_parser():
  assert loader.parse_key_value_pairs(['A=1', ' B =x=y', 'C=']) == {'A': '1', 'B': 'x=y', 'C': ''}
  for bad in ('novalue', '=1', ' =1'):
    with pytest.raises(loader.ConfigError, match='--substitution expects KEY=VALUE'):
      loader.parse_key_value_pairs([bad])
