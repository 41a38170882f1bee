"""Every released config through trainer/train.py --mode=train_and_eval, at a tiny size.

The configs under configs/{coco,cityscapes,ade20k} run unchanged (model, loss, solver, the released
augmentations, evaluator) except for crop, batch, step counts, intervals and data paths, on small
records in each dataset's format: COCO from the DeepLab2 reference records, Cityscapes and ADE20K
written by the project's converters from fake source trees. One config per dataset is also
SIGKILLed after its first checkpoint and resumed, which must restore it and train only the
remaining step; so is COCO R50, the config of the README's training command.

All 16 run by default, so CI runs them all. `KMAX_E2E_CONFIGS=coco/kmax_meta_r50,ade20k` runs
only the configs whose path contains one of the comma-separated parts.

Most of a run is single-threaded graph building, and so is most of the rest of the suite. So the
runs start in the background when the session starts (tests/conftest.py), one at a time while other
tests run, and `KMAX_E2E_WORKERS` (default 2) at a time once this module's tests are reached; they
are collected last.
"""

import concurrent.futures
import dataclasses
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.data.test_build_ade20k_data import make_ade20k
from tests.data.test_build_cityscapes_data import make_cityscapes

REPO = pathlib.Path(__file__).resolve().parents[2]
DATASETS = ('coco', 'cityscapes', 'ade20k')
CONFIGS = [str(path.relative_to(REPO)) for dataset in DATASETS
           for path in sorted((REPO / 'configs' / dataset).glob('*.textproto'))]
# Killed after ckpt-1 and resumed: one config per dataset, together covering the three backbone
# families (ResNet-50, axial ResNet-50, ConvNeXt), and the README's COCO R50 command.
RESUMED = {'configs/coco/kmax_meta_convnext_tiny_os32.textproto',
           'configs/coco/kmax_meta_r50_os32.textproto',
           'configs/cityscapes/kmax_meta_axial_r50_os32.textproto',
           'configs/ade20k/kmax_meta_r50_os32.textproto'}
# Comma-separated parts of config paths to run; unset: all.
SELECTION = [part for part in os.environ.get('KMAX_E2E_CONFIGS', '').split(',') if part]
# Biggest models first after the resumed ones, so that the pool's tail is short.
COST_ORDER = ('convnext_large', 'convnext_base', 'axial', 'convnext_small', 'convnext_tiny', 'r50')
# [height, width] multiples of the output stride 32 plus one; Cityscapes keeps its 1:2 crop and
# its resize values (0: none), the others resize to the crop as released.
CROPS = {'coco': (65, 65), 'cityscapes': (65, 129), 'ade20k': (65, 65)}
RUN_TIMEOUT = 1500  # seconds per train.py process
EXPERIMENT = 'exp'


def _env():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=str(REPO))
  env.pop('TF_CONFIG', None)
  return env


def _dataset_of(config):
  return pathlib.Path(config).parent.name


def _build_cityscapes(root):
  source = root / 'cityscapes'
  make_cityscapes(source, 'train', ['aachen_000000_000019', 'bonn_000000_000019'])
  make_cityscapes(source, 'val', ['lindau_000000_000019'])
  subprocess.run([sys.executable, '-m', 'kmax_tf.data.build_cityscapes_data',
                  f'--cityscapes_root={source}', f'--output_dir={root / "records"}',
                  '--splits=train,val', '--progress=false', '--num_workers=1'],
                 cwd=REPO, env=_env(), check=True, capture_output=True, timeout=300)
  return root / 'records'


def _build_ade20k(root):
  source = root / 'ADEChallengeData2016'
  make_ade20k(source, 'train', ['ADE_train_00000001', 'ADE_train_00000002'])
  make_ade20k(source, 'val', ['ADE_val_00000001'])
  subprocess.run([sys.executable, '-m', 'kmax_tf.data.build_ade20k_data',
                  f'--ade20k_root={source}', f'--output_dir={root / "records"}',
                  '--splits=train,val', '--progress=false', '--num_workers=1'],
                 cwd=REPO, env=_env(), check=True, capture_output=True, timeout=300)
  return root / 'records'


def _command(config, records, model_dir, steps, checkpoint_every):
  height, width = CROPS[_dataset_of(config)]
  overrides = [
      'train_dataset_options.batch_size=1',
      f'trainer_options.solver_options.training_number_of_steps={steps}',
      f'trainer_options.steps_per_loop={checkpoint_every}',
      f'trainer_options.save_checkpoints_steps={checkpoint_every}',
      f'trainer_options.save_summaries_steps={checkpoint_every}',
      'evaluator_options.eval_steps=1',
  ]
  for split in ('train', 'eval'):
    overrides.append(f'{split}_dataset_options.crop_size={height},{width}')
    if _dataset_of(config) != 'cityscapes':
      overrides += [f'{split}_dataset_options.min_resize_value={height}',
                    f'{split}_dataset_options.max_resize_value={height}']
  # No ImageNet or COCO weights here: the placeholders are emptied.
  substitutions = {'EXPERIMENT_NAME': EXPERIMENT, 'INIT_CHECKPOINT': '', 'PRETRAINED_WEIGHTS': '',
                   'TRAIN_SET': f'{records}/train-*.tfrecord',
                   'VAL_SET': f'{records}/val-*.tfrecord'}
  return ([sys.executable, 'trainer/train.py', f'--config_file={config}',
           f'--model_dir={model_dir}', '--mode=train_and_eval']
          + [f'--substitution={key}={value}' for key, value in substitutions.items()]
          + [f'--config_override={override}' for override in overrides])


@dataclasses.dataclass
class Run:
  """One config's outcome: train.py outputs (killed run first when resumed) and timings."""
  config: str
  experiment: pathlib.Path
  returncode: int = -1
  stdout: str = ''
  stderr: str = ''
  killed_stdout: str = ''
  killed_checkpoints: tuple = ()
  error: str = ''
  seconds: float = 0.0
  final_global_step: int = -1  # global_step in ckpt-2, -1 without it.


# train.py processes running now, killed by BackgroundRuns.stop.
_PROCESSES = set()


def _run_process(command):
  """(returncode, stdout, stderr) of `command`; TimeoutExpired after RUN_TIMEOUT s."""
  process = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  _PROCESSES.add(process)
  try:
    stdout, stderr = process.communicate(timeout=RUN_TIMEOUT)
  except subprocess.TimeoutExpired:
    process.kill()
    process.communicate()
    raise
  finally:
    _PROCESSES.discard(process)
  return process.returncode, stdout, stderr


def _newest_checkpoint(experiment):
  index = experiment / 'checkpoint'
  if not index.exists():
    return None
  match = re.search(r'^model_checkpoint_path: "([^"]+)"', index.read_text(), re.M)
  return match and match.group(1)


def _kill_after_first_checkpoint(command, experiment, log_dir, run):
  """Starts `command`, SIGKILLs it once the `checkpoint` index names ckpt-1."""
  with open(log_dir / 'killed.out', 'w') as out, open(log_dir / 'killed.err', 'w') as err:
    process = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=out, stderr=err)
    _PROCESSES.add(process)
    try:
      deadline = time.monotonic() + RUN_TIMEOUT
      while _newest_checkpoint(experiment) != 'ckpt-1':
        if process.poll() is not None or time.monotonic() > deadline:
          process.kill()
          process.wait()
          run.error = (f'the first run ended (rc {process.returncode}) or timed out before '
                       f'ckpt-1: {(log_dir / "killed.err").read_text()[-3000:]}')
          return False
        time.sleep(0.05)
      process.send_signal(signal.SIGKILL)
      process.wait()
    finally:
      _PROCESSES.discard(process)
  run.killed_stdout = (log_dir / 'killed.out').read_text()
  run.killed_checkpoints = tuple(sorted(path.name for path in experiment.glob('ckpt-*.index')))
  return True


def _run_config(config, records, root):
  start = time.monotonic()
  model_dir = root / config.replace('/', '_')
  run = Run(config, model_dir / EXPERIMENT)
  resumed = config in RESUMED
  command = _command(config, records, model_dir, steps=2, checkpoint_every=1 if resumed else 2)
  model_dir.mkdir(parents=True)
  try:
    if resumed:
      if not _kill_after_first_checkpoint(command, run.experiment, model_dir, run):
        return run
    run.returncode, run.stdout, run.stderr = _run_process(command)
    # Kept beside the experiment for a look after a failure (pytest --basetemp=DIR).
    (model_dir / 'train.out').write_text(run.stdout)
    (model_dir / 'train.err').write_text(run.stderr)
    if (run.experiment / 'ckpt-2.index').exists():
      run.final_global_step = _global_step(run.experiment / 'ckpt-2')
    # The checkpoints' data (up to 2.4 GB each for ConvNeXt-L) would fill the disk: 16 runs keep
    # over 60 GB. Their index files stay.
    for data in run.experiment.glob('ckpt-*.data-*'):
      data.unlink()
  except subprocess.TimeoutExpired:
    run.error = f'train.py did not finish within {RUN_TIMEOUT} s'
  finally:
    run.seconds = time.monotonic() - start
  return run


def _is_selected(config):
  return not SELECTION or any(part in config for part in SELECTION)


def _cost_rank(config):
  return (config not in RESUMED,
          next(rank for rank, part in enumerate(COST_ORDER) if part in config))


class BackgroundRuns:
  """The selected configs' runs on a thread pool whose width grows from 1 to `workers`."""

  def __init__(self, configs, tmp_path_factory, dl2_reference, workers):
    self._gate = threading.Semaphore(1)
    self._extra_permits = max(workers - 1, 0)
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(workers, 1))
    records = {'coco': concurrent.futures.Future()}
    records['coco'].set_result(dl2_reference / 'data' / 'tfrecord')
    builders = {'cityscapes': _build_cityscapes, 'ade20k': _build_ade20k}
    for dataset, build in builders.items():
      if any(_dataset_of(config) == dataset for config in configs):
        records[dataset] = self._pool.submit(
            self._gated, build, tmp_path_factory.mktemp(f'{dataset}_records'))
    root = tmp_path_factory.mktemp('released_configs')
    self.futures = {
        config: self._pool.submit(self._after_records, records[_dataset_of(config)], config, root)
        for config in configs}

  def _gated(self, fn, *args):
    with self._gate:
      return fn(*args)

  def _after_records(self, records, config, root):
    return self._gated(_run_config, config, records.result(), root)

  def widen(self):
    """Lets `workers` runs go at a time (once the rest of the suite is done)."""
    for _ in range(self._extra_permits):
      self._gate.release()
    self._extra_permits = 0

  def stop(self):
    """Cancels runs not started and kills the running ones (a session ended early)."""
    self._pool.shutdown(wait=False, cancel_futures=True)
    for process in list(_PROCESSES):
      process.kill()
    self._pool.shutdown(wait=True)


_BACKGROUND = []


def selected_configs(items):
  """The selected configs of this module's test items, biggest first."""
  selected = [item.callspec.params['config'] for item in items
              if item.module.__name__ == __name__ and hasattr(item, 'callspec')]
  return sorted((config for config in selected if _is_selected(config)), key=_cost_rank)


def start_background_runs(configs, tmp_path_factory, dl2_reference):
  """Starts `configs` one at a time (tests/conftest.py calls this at the session's start)."""
  runs = BackgroundRuns(configs, tmp_path_factory, dl2_reference,
                        int(os.environ.get('KMAX_E2E_WORKERS', '2')))
  _BACKGROUND.append(runs)
  return runs


@pytest.fixture(scope='module')
def runs(request, tmp_path_factory, dl2_reference):
  """config -> Future[Run]; started at the session's start, or here if not."""
  if not _BACKGROUND:
    start_background_runs(selected_configs(request.session.items), tmp_path_factory,
                          dl2_reference)
  _BACKGROUND[0].widen()
  return _BACKGROUND[0].futures


def _global_step(checkpoint):
  import tensorflow as tf
  return int(tf.train.load_checkpoint(str(checkpoint)).get_tensor(
      'global_step/.ATTRIBUTES/VARIABLE_VALUE'))


@pytest.mark.slow
@pytest.mark.parametrize('config', [
    pytest.param(config, marks=pytest.mark.skipif(
        not _is_selected(config), reason='not in KMAX_E2E_CONFIGS'))
    for config in CONFIGS])
def test_released_config_trains_and_evaluates(config, runs):
  run = runs[config].result(timeout=4 * RUN_TIMEOUT)
  print(f'{config}: {run.seconds:.0f} s')
  assert not run.error, f'{config}: {run.error}'
  assert run.returncode == 0, f'{config} failed:\n{run.stderr[-6000:]}'
  assert (run.experiment / 'ckpt-2.index').exists()
  assert run.final_global_step == 2
  assert 'step 2/2 | loss' in run.stdout
  assert re.search(r'Evaluation \(percent\): PQ \d+\.\d\d \| SQ', run.stdout), run.stdout[-3000:]
  assert list((run.experiment / 'eval').glob('events.out.tfevents.*'))
  if config in RESUMED:
    # The first run got through step 1 and its checkpoint, and was killed before step 2's.
    assert 'step 1/2 | loss' in run.killed_stdout
    assert run.killed_checkpoints == ('ckpt-0.index', 'ckpt-1.index'), run.killed_checkpoints
    # The rerun restored ckpt-1 and trained step 2 only.
    assert f'restored from checkpoint: {run.experiment}/ckpt-1' in run.stdout
    assert 'train | step:      1 | training until step 2' in run.stdout
    assert 'step 1/2' not in run.stdout
  else:
    assert 'train | step:      0 | training until step 2' in run.stdout


def test_every_dataset_has_released_configs():
  # Guards the discovery above: a moved folder must not silently test nothing.
  assert {_dataset_of(config) for config in CONFIGS} == set(DATASETS)
  assert RESUMED <= set(CONFIGS)
  assert len(CONFIGS) == 16
  assert all(any(part in config for part in COST_ORDER) for config in CONFIGS)
