"""Faults during real runs: broken checkpoints in model_dir, eval without a checkpoint.

The faults are real: checkpoint files corrupted or truncated on disk between
two runs of `run_experiment` on the tiny stand-ins.
"""

import pathlib

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf.training import checkpointing
from tests.training import standins


def _run(model_dir, steps, mode='train', **kwargs):
  return standins.run_experiment(model_dir, steps, mode, **kwargs)


def _files(folder):
  return {p.name: p.read_bytes() for p in pathlib.Path(folder).glob('ckpt-*')}


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A model_dir with ckpt-2, ckpt-4, ckpt-6 (3 kept) and their bytes."""
  model_dir = tmp_path_factory.mktemp('faults') / 'run'
  _run(model_dir, 6)
  return model_dir


def _copy(source, target):
  target.mkdir(parents=True)
  for path in source.iterdir():
    if path.is_file():
      (target / path.name).write_bytes(path.read_bytes())
  return target


@pytest.mark.parametrize('fault', ['corrupt_index', 'truncated_data'])
def test_broken_newest_checkpoint_falls_back_and_keeps_the_files(trained, tmp_path, fault, capsys):
  model_dir = _copy(trained, tmp_path / 'run')
  assert sorted(p.name for p in model_dir.glob('ckpt-*.index')) == [
      'ckpt-2.index', 'ckpt-4.index', 'ckpt-6.index']
  if fault == 'corrupt_index':
    broken = model_dir / 'ckpt-6.index'
    data = bytearray(broken.read_bytes())
    data[len(data) // 2] ^= 0xFF
    broken.write_bytes(bytes(data))
  else:
    broken = model_dir / 'ckpt-6.data-00000-of-00001'
    broken.write_bytes(broken.read_bytes()[:len(broken.read_bytes()) // 2])
  broken_files = {name: data for name, data in _files(model_dir).items() if 'ckpt-6' in name}
  expected_bias = tf.train.load_checkpoint(str(model_dir / 'ckpt-4')).get_tensor(
      'head/bias/.ATTRIBUTES/VARIABLE_VALUE')

  # Eval falls back to ckpt-4 and evaluates its weights.
  _, results = _run(model_dir, 6, mode='eval')
  assert results['head_bias_sum'] == pytest.approx(float(expected_bias.sum()), rel=1e-6)
  err = capsys.readouterr().err
  assert f'Checkpoint {model_dir}/ckpt-6 in {model_dir} cannot be read' in err
  assert f'newest intact checkpoint {model_dir}/ckpt-4' in err
  assert 'broken_checkpoints' in err
  # The broken files are kept, byte for byte, outside the manager's reach.
  kept = _files(model_dir / checkpointing.BROKEN_CHECKPOINTS_DIR)
  assert kept == broken_files
  assert tf.train.latest_checkpoint(str(model_dir)) == str(model_dir / 'ckpt-4')

  # Training resumes from ckpt-4 and writes a new, readable ckpt-6.
  model, _ = _run(model_dir, 6)
  assert checkpointing.checkpoint_problem(str(model_dir / 'ckpt-6')) is None
  assert _files(model_dir / checkpointing.BROKEN_CHECKPOINTS_DIR) == broken_files
  assert np.isfinite(model.head.bias.numpy()).all()


def test_every_checkpoint_broken_is_an_error_that_changes_nothing(trained, tmp_path):
  model_dir = _copy(trained, tmp_path / 'run')
  for index in model_dir.glob('ckpt-*.index'):
    index.write_bytes(b'not an index')
  before = _files(model_dir)
  with pytest.raises(ValueError, match=r'No intact checkpoint in .*ckpt-6 is broken.*ckpt-2 is '
                     r'broken.*Nothing was moved or deleted'):
    _run(model_dir, 8)
  assert _files(model_dir) == before
  assert not (model_dir / checkpointing.BROKEN_CHECKPOINTS_DIR).exists()


def test_eval_without_checkpoint_is_an_error_unless_asked(tmp_path):
  missing = tmp_path / 'no_such_run'
  with pytest.raises(ValueError, match=f'--mode=eval: {missing} does not exist.*'
                     '--eval_initial_model'):
    _run(missing, 2, mode='eval')
  assert not missing.exists()  # Not created.
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(ValueError, match=f'{empty} holds no checkpoint'):
    _run(empty, 2, mode='eval')
  _, results = _run(empty, 2, mode='eval', eval_initial_model=True)
  assert np.isfinite(results['head_bias_sum'])
