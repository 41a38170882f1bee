"""Training speed and memory: the whole trainer command, and the model step alone.

Usage:
  python benchmarks/train_step.py [--crop=641] [--steps=6] [--repeats=3]
      [--deeplab2_root=DIR] [--recompute[=PARTS]] [--skip_full] [--skip_model] [--skip_xla]
      [--skip_demo]

Rows:
  full trainer   `python trainer/train.py --mode=train` on the released COCO R50
                 config (augmentations on: autoaugment, copy-paste, random
                 scale) with the DeepLab2 reference TFRecords
                 (../shared/dl2_reference/data/tfrecord), batch 1 at `--crop`.
                 With `--deeplab2_root` (a directory holding a DeepLab2
                 checkout as the package `deeplab2`, protos compiled; see
                 tests/helpers/deeplab2_model.py) DeepLab2's own
                 `deeplab2/trainer/train.py` runs the same config and records,
                 alternating with ours. s/step is measured inside the process
                 from orbit's log timestamps between the end of the first loop
                 (tracing, warm-up) and the end of the last; peak memory is the
                 process's maximum resident set (getrusage of that child).
                 With `--recompute` a third trainer runs the same config with
                 `recompute_activations` for the encoder and pixel decoder
                 (`--recompute=pixel_decoder`: the parts named).
  model step     the training step on two cached batches (no input pipeline,
                 no checkpoints or summaries), ours in graph mode and with XLA,
                 so input cost and step cost are told apart.
  demo           the demo config's step, steps/s.

Medians over `--repeats`; ratios are against DeepLab2's row where there is
one (>1: ours is faster / smaller), else against our graph-mode row.
"""

import argparse
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import orbit  # noqa: E402
import tensorflow as tf  # noqa: E402
from google.protobuf import text_format  # noqa: E402

from kmax_tf.config import loader  # noqa: E402
from kmax_tf.data import dataset_descriptors  # noqa: E402
from kmax_tf.data import input_pipeline  # noqa: E402
from kmax_tf.losses import builder as loss_builder  # noqa: E402
from kmax_tf.model import builder as model_builder  # noqa: E402
from kmax_tf.training import trainer as trainer_lib  # noqa: E402

COCO_CONFIG = REPO / 'configs' / 'coco' / 'kmax_meta_r50_os32.textproto'
COCO_RECORDS = REPO.parent / 'shared' / 'dl2_reference' / 'data' / 'tfrecord'
# orbit's controller logs "train | step: N" at the end of every loop.
_LOOP_END = re.compile(r'^I\d{4} (\d\d):(\d\d):(\d\d\.\d+) .*train \| step:\s+(\d+) \|')


def coco_config(crop: int, steps: int = 1, steps_per_loop: int = 1):
  overrides = [
      f'train_dataset_options.crop_size={crop},{crop}',
      f'train_dataset_options.min_resize_value={crop}',
      f'train_dataset_options.max_resize_value={crop}',
      'train_dataset_options.batch_size=1',
      f'trainer_options.solver_options.training_number_of_steps={steps}',
      f'trainer_options.steps_per_loop={steps_per_loop}',
      f'trainer_options.save_summaries_steps={100 * steps_per_loop}',
      'trainer_options.save_checkpoints_steps=100000',
      'model_options.initial_checkpoint=',
  ]
  substitutions = {'EXPERIMENT_NAME': 'bench', 'INIT_CHECKPOINT': '',
                   'TRAIN_SET': str(COCO_RECORDS / 'train-*.tfrecord'),
                   'VAL_SET': str(COCO_RECORDS / 'val-*.tfrecord')}
  return loader.load_config(COCO_CONFIG, substitutions, overrides)


def _loop_ends(log: str):
  """[(seconds of day, step)] of orbit's end-of-loop lines."""
  ends = []
  for line in log.splitlines():
    match = _LOOP_END.match(line)
    if match and int(match.group(4)) > 0:
      hours, minutes, seconds, step = match.groups()
      ends.append((int(hours) * 3600 + int(minutes) * 60 + float(seconds), int(step)))
  return ends


def _run_trainer(command, env, cwd):
  """(s/step after the first loop, wall seconds, peak RSS GB) of one trainer process."""
  start = time.perf_counter()
  with tempfile.TemporaryFile('w+') as log:
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                               text=True)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    log.seek(0)
    text = log.read()
  if process.returncode != 0:
    raise RuntimeError(f'{command[1]} failed ({process.returncode}):\n{text[-3000:]}')
  ends = _loop_ends(text)
  if len(ends) < 2:
    raise RuntimeError(f'{command[1]}: fewer than two training loops in the log')
  (first_time, first_step), (last_time, last_step) = ends[0], ends[-1]
  seconds = (last_time - first_time) % 86400
  return seconds / (last_step - first_step), wall, usage.ru_maxrss / 2**20


def _full_trainer_rows(args):
  """Rows for our trainer/train.py and (optionally) DeepLab2's, run alternately."""
  config = coco_config(args.crop, args.steps, args.steps_per_loop)
  work = pathlib.Path(tempfile.mkdtemp(prefix='kmax_train_bench_'))
  config_path = work / 'config.textproto'
  config_path.write_text(text_format.MessageToString(config))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', TF_USE_LEGACY_KERAS='1')
  env.pop('TF_CONFIG', None)
  ours_env = dict(env, PYTHONPATH=str(REPO))
  runners = {'kmax_tf trainer/train.py': lambda run: _run_trainer(
      [sys.executable, 'trainer/train.py', f'--config_file={config_path}', '--mode=train',
       f'--model_dir={work / f"ours{run}"}'], ours_env, REPO)}
  if args.deeplab2_root:
    root = os.path.abspath(args.deeplab2_root)
    if not os.path.isfile(os.path.join(root, 'deeplab2', 'trainer', 'train.py')):
      sys.exit(f'--deeplab2_root={root}: no deeplab2/trainer/train.py there')
    dl2_env = dict(env, PYTHONPATH=os.pathsep.join([root, os.path.join(root, 'models')]))
    runners['DeepLab2 trainer/train.py'] = lambda run: _run_trainer(
        [sys.executable, 'deeplab2/trainer/train.py', f'--config_file={config_path}',
         '--mode=train', f'--model_dir={work / f"dl2_{run}"}', '--num_gpus=0'], dl2_env, root)
  if args.recompute:
    recompute_config = type(config)()
    recompute_config.CopyFrom(config)
    recompute_config.trainer_options.solver_options.recompute_activations[:] = (
        args.recompute.split(','))
    recompute_path = work / 'config_recompute.textproto'
    recompute_path.write_text(text_format.MessageToString(recompute_config))
    runners[f'kmax_tf trainer/train.py, recomputed {args.recompute}'] = lambda run: _run_trainer(
        [sys.executable, 'trainer/train.py', f'--config_file={recompute_path}', '--mode=train',
         f'--model_dir={work / f"recompute{run}"}'], ours_env, REPO)
  results = {name: [] for name in runners}
  for run in range(args.repeats):
    for name, runner in runners.items():
      results[name].append(runner(run))
      print(f'  {name} run {run + 1}: {results[name][-1][0]:.2f} s/step, '
            f'{results[name][-1][2]:.2f} GB', flush=True)
  rows = []
  for name, values in results.items():
    rows.append(dict(name=f'full: {name}', step=statistics.median(v[0] for v in values),
                     wall=statistics.median(v[1] for v in values),
                     memory=statistics.median(v[2] for v in values)))
  return rows


def _measure_model_step(config, jit_compile: bool, steps: int, repeats: int):
  """Median seconds per step on cached batches, or the error text."""
  options = config.train_dataset_options
  descriptor = dataset_descriptors.descriptor_from_options(options)
  dataset = input_pipeline.build_dataset(options, descriptor, is_training=True, seed=1)
  dataset = dataset.take(2).cache().repeat()  # Measure the model, not the decoder.
  with tf.distribute.OneDeviceStrategy('/cpu:0').scope():
    model = model_builder.build_model(config)
    loss = loss_builder.build_loss(config, num_auxiliary_outputs=model.auxiliary_output_number)
    step = orbit.utils.create_global_step()
    trainer = trainer_lib.Trainer(model, loss, dataset, config.trainer_options.solver_options,
                                  step, backbone=model.checkpoint_items['encoder'],
                                  jit_compile=jit_compile)
  try:
    trainer.train(tf.constant(1))  # Trace / compile.
  except Exception as error:  # noqa: BLE001  (report, e.g. XLA-unsupported ops)
    return str(error).splitlines()[0][:160]
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    trainer.train(tf.constant(steps))
    times.append((time.perf_counter() - start) / steps)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--steps', type=int, default=6, help='training steps per run')
  parser.add_argument('--steps_per_loop', type=int, default=2)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--crop', type=int, default=641)
  parser.add_argument('--deeplab2_root', default=None)
  parser.add_argument('--recompute', nargs='?', const='pixel_encoder,pixel_decoder',
                      default='', help='also run our trainer with activation recomputation '
                      'of these parts (comma-separated; default: encoder and pixel decoder)')
  parser.add_argument('--skip_full', action='store_true')
  parser.add_argument('--skip_model', action='store_true')
  parser.add_argument('--skip_xla', action='store_true')
  parser.add_argument('--skip_demo', action='store_true')
  parser.add_argument('--demo_config', default=str(REPO / 'configs/demo/kmax_demo.textproto'))
  parser.add_argument('--demo_data', default='')
  parser.add_argument('--demo_override', action='append', default=[])
  args = parser.parse_args()
  if args.steps < 2 * args.steps_per_loop:
    parser.error('--steps must cover at least two loops of --steps_per_loop')

  rows = []
  if not args.skip_full:
    rows += _full_trainer_rows(args)
  if not args.skip_model:
    config = coco_config(args.crop)
    rows.append(dict(name=f'model step: kmax_tf graph (crop {args.crop})',
                     step=_measure_model_step(config, False, 2, args.repeats)))
    if not args.skip_xla:
      rows.append(dict(name=f'model step: kmax_tf XLA (crop {args.crop})',
                       step=_measure_model_step(config, True, 2, args.repeats)))
  if not args.skip_demo:
    substitutions = {'DEMO_DATA': args.demo_data} if args.demo_data else None
    config = loader.load_config(args.demo_config, substitutions, args.demo_override)
    rows.append(dict(name=f'model step: demo ({pathlib.Path(args.demo_config).name})',
                     step=_measure_model_step(config, False, 3, args.repeats)))

  baseline = next((r for r in rows if r['name'].startswith('full: DeepLab2')), None)
  print(f'\n{"case":<48} {"s/step":>8} {"speed":>7} {"wall s":>8} {"peak GB":>8} {"memory":>7}')
  for row in rows:
    if isinstance(row['step'], str):
      print(f'{row["name"]:<48} {"failed":>8}   {row["step"]}')
      continue
    speed = memory = ''
    if baseline is not None and row['name'].startswith('full'):
      speed = f'{baseline["step"] / row["step"]:.2f}x'
      memory = f'{row["memory"] / baseline["memory"]:.2f}x'
    wall = f'{row["wall"]:.0f}' if 'wall' in row else ''
    peak = f'{row["memory"]:.2f}' if 'memory' in row else ''
    print(f'{row["name"]:<48} {row["step"]:8.2f} {speed:>7} {wall:>8} {peak:>8} {memory:>7}')
  print(f'(COCO R50 released config, batch 1, crop {args.crop}; median of {args.repeats} runs; '
        'speed = DeepLab2 s/step / ours, memory = ours / DeepLab2. This 2-core CPU is often '
        'shared with other jobs (see `uptime`): compare ratios of runs made side by side.)')
  print(f'load average at the end: {os.getloadavg()[0]:.1f}')


if __name__ == '__main__':
  main()
