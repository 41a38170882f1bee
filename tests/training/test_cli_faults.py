"""trainer/train.py on bad inputs: unresolved placeholders, broken TFRecords, no checkpoint.

Each test injects the fault itself (a truncated or corrupted file, a missing
substitution) and checks the one-line message and that nothing was written.
"""

import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf import cli_errors
from kmax_tf.config import loader
from tests.training.test_end_to_end import REPO
from tests.training.test_end_to_end import _env


def _train(config, model_dir, *extra, timeout=600):
  return subprocess.run(
      [sys.executable, 'trainer/train.py', f'--config_file={config}', f'--model_dir={model_dir}',
       *extra], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


def _copy_data(source, target):
  target.mkdir()
  for path in source.glob('*.tfrecord'):
    (target / path.name).write_bytes(path.read_bytes())
  return target


def test_unresolved_placeholder_is_reported_before_tensorflow_loads(tiny_setup, tmp_path):
  _, _, config = tiny_setup
  start = time.monotonic()
  result = _train(config, tmp_path / 'model', '--mode=train')
  elapsed = time.monotonic() - start
  assert result.returncode != 0
  assert ('train_dataset_options.file_pattern is \'${DATA}/train-*.tfrecord\', whose placeholder '
          '${DATA} is not resolved. Set it with --substitution DATA=...') in result.stderr
  assert 'Traceback' not in result.stderr
  assert elapsed < 15  # Python start + config; TensorFlow (~5 s here) is not imported.
  assert not (tmp_path / 'model').exists()


def test_bad_substitution_and_unknown_backbone_are_one_line_errors(tiny_setup, tmp_path):
  _, data, config = tiny_setup
  result = _train(config, tmp_path / 'model', '--mode=train', '--substitution=DATA')
  assert result.returncode != 0
  assert "Error in the config: --substitution expects KEY=VALUE, got 'DATA'" in result.stderr
  # Backbone names are listed by the model builder: checked once TensorFlow is loaded.
  result = _train(config, tmp_path / 'model', '--mode=train', f'--substitution=DATA={data}',
                  '--config_override=model_options.backbone.name=kmax_resnet5O')
  assert result.returncode != 0
  assert "model_options.backbone.name is 'kmax_resnet5O'" in result.stderr
  assert "'kmax_axial_resnet50'" in result.stderr
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'model').exists()


def test_unresolved_initial_checkpoint_placeholder(tiny_setup, tmp_path):
  _, data, config = tiny_setup
  result = _train(config, tmp_path / 'model', '--mode=eval', f'--substitution=DATA={data}',
                  '--config_override=model_options.initial_checkpoint="${INIT_CHECKPOINT}"')
  assert result.returncode != 0
  assert 'model_options.initial_checkpoint' in result.stderr
  assert '${INIT_CHECKPOINT} is not resolved' in result.stderr
  assert 'Traceback' not in result.stderr


@pytest.mark.parametrize('fault, message', [
    ('truncated', 'truncated or not a TFRecord file: the record at byte offset'),
    ('not_a_tfrecord', 'truncated or not a TFRecord file: the record at byte offset 0 declares'),
    ('empty', 'is empty'),
    ('bad_first_record', 'not a readable TFRecord file (the first record fails: corrupted '
     'record at 12'),
])
def test_broken_tfrecord_is_named_before_any_work(tiny_setup, tmp_path, fault, message):
  _, data, config = tiny_setup
  data = _copy_data(data, tmp_path / 'data')
  shard = data / 'train-00000-of-00001.tfrecord'
  original = shard.read_bytes()
  if fault == 'truncated':
    shard.write_bytes(original[:len(original) - 100])
  elif fault == 'not_a_tfrecord':
    shard.write_text('image,label\na.jpg,b.png\n')
  elif fault == 'empty':
    shard.write_bytes(b'')
  else:
    corrupted = bytearray(original)
    corrupted[100] ^= 0xFF  # Inside the first record's data: its checksum fails.
    shard.write_bytes(bytes(corrupted))
  result = _train(config, tmp_path / 'model', '--mode=train', f'--substitution=DATA={data}')
  assert result.returncode != 0
  assert f'Error in the data: {shard}' in result.stderr and message in result.stderr
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'model').exists()  # Checked before the model_dir is made.


@pytest.mark.slow
def test_corruption_found_during_training_is_one_line_and_keeps_the_checkpoint(
    tiny_setup, tmp_path):
  _, data, config = tiny_setup
  data = _copy_data(data, tmp_path / 'data')
  shard = data / 'train-00000-of-00001.tfrecord'
  records = [r.numpy() for r in tf.data.TFRecordDataset(str(shard))]
  # Flip a byte inside the third record's data: framing and first record stay fine.
  offset = sum(len(r) + 16 for r in records[:2])
  corrupted = bytearray(shard.read_bytes())
  corrupted[offset + 12 + len(records[2]) // 2] ^= 0xFF
  shard.write_bytes(bytes(corrupted))
  model_dir = tmp_path / 'model'
  result = _train(config, model_dir, '--mode=train', f'--substitution=DATA={data}')
  assert result.returncode != 0
  error_lines = [line for line in result.stderr.splitlines() if line.startswith('Error')]
  assert error_lines == [
      f'Error in the data: {shard}: TFRecord file is corrupt or truncated at byte offset '
      f'{offset}. Checkpoints written before stay intact in {model_dir}/tiny.'
  ], result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  # ckpt-0 (written before the first batch) is intact and is the newest checkpoint.
  latest = tf.train.latest_checkpoint(str(model_dir / 'tiny'))
  assert latest == str(model_dir / 'tiny' / 'ckpt-0')
  from kmax_tf.training import checkpointing
  assert checkpointing.checkpoint_problem(latest) is None


def test_eval_without_checkpoint_cli(tiny_setup, tmp_path):
  _, data, config = tiny_setup
  result = _train(config, tmp_path / 'model', '--mode=eval', f'--substitution=DATA={data}')
  assert result.returncode != 0
  assert f'Error: --mode=eval: {tmp_path}/model/tiny does not exist' in result.stderr
  assert '--eval_initial_model' in result.stderr and 'Traceback' not in result.stderr
  assert not (tmp_path / 'model' / 'tiny').exists()


def test_only_kmax_tf_checks_are_one_line_user_errors():
  try:
    loader.parse_config_text('no_such_field: 1')
  except ValueError as error:
    assert cli_errors.is_user_error(error)
  try:
    open(pathlib.Path('/nonexistent/kmax.textproto'))
  except OSError as error:
    assert not cli_errors.is_user_error(error)  # Raised here, not by a kmax_tf check.
  try:
    np.zeros(6).reshape(4, 4)
  except ValueError as error:
    assert not cli_errors.is_user_error(error)  # Inside NumPy: keeps its traceback.
  try:
    tf.reshape(tf.zeros([6]), [4, 4])
  except (ValueError, tf.errors.InvalidArgumentError) as error:
    assert not cli_errors.is_user_error(error)  # Inside TensorFlow.
