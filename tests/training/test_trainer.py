"""Trainer: replica equivalence with synchronized BN, kill -9 resume, non-finite losses,
mixed precision. Subprocess runs use the tiny stand-ins of tests/training/standins.py."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import orbit
import pytest
import tensorflow as tf

from kmax_tf.keras_setup import keras
from kmax_tf.training import trainer as trainer_lib
from tests.training import standins

REPO = pathlib.Path(__file__).resolve().parents[2]


def _env():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=str(REPO))
  env.pop('TF_CONFIG', None)
  return env


def _run(module, *args, timeout=300, check=True):
  result = subprocess.run([sys.executable, '-m', module, *map(str, args)], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)
  if check and result.returncode != 0:
    raise AssertionError(f'{module} failed ({result.returncode}):\n{result.stderr[-3000:]}')
  return result


def _checkpoint_steps(model_dir):
  return sorted(int(p.name[5:-6]) for p in pathlib.Path(model_dir).glob('ckpt-*.index'))


@pytest.fixture(scope='module')
def mirrored_results():
  output = _run('tests.training.mirrored_check').stdout
  line = [entry for entry in output.splitlines() if entry.startswith('RESULT ')][-1]
  return json.loads(line[len('RESULT '):])


@pytest.mark.parametrize('clip', [0, 1])
def test_two_replicas_equal_one_replica_with_sync_batchnorm(mirrored_results, clip):
  one, two = mirrored_results[f'one_sync1_clip{clip}'], mirrored_results[f'two_sync1_clip{clip}']
  assert mirrored_results['num_replicas'] == 2
  assert one['step'] == two['step'] == 1
  assert two['loss'] == pytest.approx(one['loss'], rel=1e-6)
  for grad_one, grad_two in zip(one['grads'], two['grads']):
    # atol: recovering a gradient as (before - after) / lr costs float32 precision.
    np.testing.assert_allclose(grad_two, grad_one, rtol=1e-4, atol=1e-5)
  # Moving statistics were updated with the global batch statistics.
  for one_stat, two_stat in zip(one['moving'], two['moving']):
    np.testing.assert_allclose(two_stat, one_stat, rtol=1e-5, atol=1e-6)


def test_unsynchronized_batchnorm_would_differ(mirrored_results):
  # The control: per-replica statistics change the loss, so the test above can fail.
  one, two = mirrored_results['one_sync0_clip0'], mirrored_results['two_sync0_clip0']
  assert abs(two['loss'] - one['loss']) > 1e-5
  assert one['loss'] == pytest.approx(mirrored_results['one_sync1_clip0']['loss'], rel=1e-6)


def test_kill9_and_restart_resumes_with_exact_step_accounting(tmp_path):
  steps = 24
  reference_dir, killed_dir = tmp_path / 'reference', tmp_path / 'killed'
  exact = '--checkpoint_input_iterator=true'  # Same batches after the restart.
  _run('tests.training.standin_run', reference_dir, steps, exact)

  command = [sys.executable, '-m', 'tests.training.standin_run', str(killed_dir), str(steps),
             '--sleep_per_loop=0.4', exact]
  process = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  try:
    while time.time() < deadline and (not _checkpoint_steps(killed_dir)
                                      or max(_checkpoint_steps(killed_dir)) < 8):
      assert process.poll() is None, 'the run ended before it could be killed'
      time.sleep(0.05)
    time.sleep(0.2)  # Somewhere inside the following loop / checkpoint write.
    process.send_signal(signal.SIGKILL)
  finally:
    process.wait(timeout=60)
  assert process.returncode == -signal.SIGKILL
  killed_at = max(_checkpoint_steps(killed_dir))
  assert 8 <= killed_at < steps

  result = _run('tests.training.standin_run', killed_dir, steps, exact)
  assert f'restored from checkpoint: {killed_dir}/ckpt-{killed_at}' in result.stdout
  assert f'step {killed_at + 2}/{steps}' in result.stdout  # First loop after the restore.
  assert _checkpoint_steps(killed_dir)[-1] == steps
  reference = np.load(reference_dir / 'final_weights.npz')
  resumed = np.load(killed_dir / 'final_weights.npz')
  assert sorted(reference) == sorted(resumed)
  for name in reference:
    # Same updates on the same batches in the same order as the uninterrupted run.
    np.testing.assert_allclose(resumed[name], reference[name], rtol=1e-6, atol=1e-7,
                               err_msg=name)


def test_non_finite_loss_stops_without_poisoned_checkpoint(tmp_path):
  result = _run('tests.training.standin_run', tmp_path, 20, '--nan_at_step=5', check=False)
  assert result.returncode != 0
  assert 'Non-finite training loss at step 5' in result.stderr
  assert 'total_loss, aux_loss' in result.stderr and 'semantic_loss' not in (
      result.stderr.split('Non-finite training loss at step 5')[1].split('not finite')[0])
  assert _checkpoint_steps(tmp_path) == [0, 2, 4]


def test_non_finite_loss_restore_continues(tmp_path):
  result = _run('tests.training.standin_run', tmp_path, 14, '--nan_at_step=5',
                '--non_finite_action=restore')
  assert 'restored' in result.stderr and 'Non-finite loss at step 5' in result.stderr
  assert _checkpoint_steps(tmp_path)[-1] == 14
  weights = np.load(tmp_path / 'final_weights.npz')
  assert all(np.isfinite(weights[name]).all() for name in weights)


@pytest.mark.parametrize('policy', ['mixed_float16', 'mixed_bfloat16'])
def test_mixed_precision_trains_a_few_steps(policy):
  config = standins.make_config(steps=10, mixed_precision_policy=policy,
                                backbone_learning_rate_multiplier=0.1)
  keras.mixed_precision.set_global_policy(policy)
  try:
    model = standins.TinyModel()
    model(tf.zeros([1, standins.CROP, standins.CROP, 3]))
    step = tf.Variable(0, dtype=tf.int64)
    trainer = trainer_lib.Trainer(model, standins.ToyLoss(), standins.make_dataset(4),
                                  config.trainer_options.solver_options, step,
                                  backbone=model.encoder)
    before = [v.numpy() for v in model.trainable_variables]
    logs = trainer.train(tf.constant(3))
  finally:
    keras.mixed_precision.set_global_policy('float32')
  assert int(step.numpy()) == 3
  assert model.head.compute_dtype == policy.split('_')[1]
  assert all(v.dtype == tf.float32 for v in model.trainable_variables)
  assert np.isfinite(float(logs['losses/train_total_loss']))
  changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables)]
  assert all(changed)
  if policy == 'mixed_float16':
    assert 'loss_scale' in logs and float(logs['loss_scale']) > 1.0
    assert len(trainer.loss_scale_optimizers) == 2
  else:
    assert 'loss_scale' not in logs


def test_initial_checkpoint_only_when_model_dir_is_empty_and_eval_mode(tmp_path):
  # An "initial checkpoint" with a recognizable head bias.
  source = standins.TinyModel()
  source(tf.zeros([1, standins.CROP, standins.CROP, 3]))
  source.head.bias.assign([1.0, 2.0, 3.0])
  initial = tf.train.Checkpoint(**source.checkpoint_items).write(str(tmp_path / 'init' / 'ckpt'))

  model, _ = standins.run_experiment(tmp_path / 'run', 2, initial_checkpoint=initial)
  step0 = tf.train.load_checkpoint(str(tmp_path / 'run' / 'ckpt-0'))
  np.testing.assert_allclose(step0.get_tensor('head/bias/.ATTRIBUTES/VARIABLE_VALUE'),
                             [1.0, 2.0, 3.0])  # Step 0 is the initial checkpoint.
  trained_bias = model.head.bias.numpy()
  assert not np.allclose(trained_bias, [1.0, 2.0, 3.0])
  # A restart with a different initial checkpoint keeps the model_dir state.
  source.head.bias.assign([9.0, 9.0, 9.0])
  other = tf.train.Checkpoint(**source.checkpoint_items).write(str(tmp_path / 'other' / 'ckpt'))
  model, _ = standins.run_experiment(tmp_path / 'run', 2, initial_checkpoint=other)
  np.testing.assert_allclose(model.head.bias.numpy(), trained_bias)
  # --mode=eval evaluates the newest checkpoint of model_dir.
  model, results = standins.run_experiment(tmp_path / 'run', 2, mode='eval', weights_seed=5)
  assert results['head_bias_sum'] == pytest.approx(float(trained_bias.sum()), rel=1e-6)


@pytest.mark.parametrize('backbone_multiplier', [None, 0.1])
def test_the_training_step_is_traced_once(monkeypatch, backbone_multiplier):
  # Optimizer slots made in the first apply_gradients would make TensorFlow trace the whole
  # step a second time (variables may be created in a function's first trace only).
  traces = []
  replica_step = trainer_lib.Trainer._replica_step

  def counting_replica_step(self, inputs):
    traces.append(None)
    return replica_step(self, inputs)

  monkeypatch.setattr(trainer_lib.Trainer, '_replica_step', counting_replica_step)
  config = standins.make_config()
  solver = config.trainer_options.solver_options
  if backbone_multiplier is not None:
    solver.backbone_learning_rate_multiplier = backbone_multiplier
  with tf.distribute.OneDeviceStrategy('/cpu:0').scope():
    model = standins.TinyModel()
    model(tf.zeros([1, standins.CROP, standins.CROP, 3]))
    trainer = trainer_lib.Trainer(model, standins.ToyLoss(), standins.make_dataset(2), solver,
                                  orbit.utils.create_global_step(), backbone=model.encoder)
  before = [v.numpy() for v in model.trainable_variables]
  trainer.train(tf.constant(2))
  trainer.train(tf.constant(3))
  assert len(traces) == 1
  assert int(trainer.global_step.numpy()) == 5
  assert all(np.any(a != b) for a, b in zip(before, (v.numpy() for v in model.trainable_variables)))
  optimizers = [trainer.optimizer] + ([trainer.backbone_optimizer] if backbone_multiplier else [])
  assert [int(o.iterations.numpy()) for o in optimizers] == [5] * len(optimizers)
