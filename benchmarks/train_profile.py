"""Where a training step's time goes: our trainer and DeepLab2's, op time per model part.

Usage:
  python benchmarks/train_profile.py [--deeplab2_root=DIR] [--crop=641] [--steps=6]

Runs `trainer/train.py --mode=train` on the released COCO R50 config and the
DeepLab2 reference records (the same set-up as `benchmarks/train_step.py`'s
full-trainer rows) under the TensorFlow profiler, then sums the duration of
every TensorFlow op run inside the training loop by the part of the model it
belongs to (its name scope), forward and backward apart, in op-seconds per
step. Two CPU threads run ops at once, so op-seconds exceed wall seconds.
With `--deeplab2_root` (see `benchmarks/train_step.py`) DeepLab2's own trainer
runs the same config and records, and the table compares the two part by part.

Ops are attributed by name scope: `kMaXDeepLab/<part>/...` is a model part,
`gradient_tape/...` its backward pass, optimizer ops name Adam. Ops created
without a model scope (the loss in kmax_tf, custom gradients) fall in "loss
and unscoped".
"""

import argparse
import collections
import glob
import os
import pathlib
import runpy
import subprocess
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
REPO = pathlib.Path(__file__).resolve().parents[1]

_LOOP_PREFIX = 'while/body/_1/'  # orbit's multi-step training loop.
_WRAPPER_EVENTS = ('Process', 'Run', 'RunWithBorrowedArgs', 'DoCompute')
_PARTS = {'kmax_pixel_decoder': 'pixel decoder', 'kmax_transformer_decoder': 'transformer decoder',
          'MaXDeepLab': 'heads'}


def _child(logdir: str, script: str, args):
  """Runs `script` (a trainer/train.py) in this process under the profiler."""
  import tensorflow as tf
  sys.argv = [script] + list(args)
  tf.profiler.experimental.start(
      logdir, tf.profiler.experimental.ProfilerOptions(host_tracer_level=2, python_tracer_level=0))
  try:
    runpy.run_path(script, run_name='__main__')
  except SystemExit as exit_:
    if exit_.code not in (0, None):
      raise
  finally:
    tf.profiler.experimental.stop()


def _category(op_name: str) -> str:
  if not op_name.startswith(_LOOP_PREFIX):
    return 'outside the training loop (input pipeline)'
  name = op_name[len(_LOOP_PREFIX):]
  direction = 'forward'
  if name.startswith('gradient_tape/'):
    direction, name = 'backward', name[len('gradient_tape/'):]
  if 'Adam' in name.split('/')[0]:
    return 'optimizer update'
  scopes = name.split('/')
  if scopes[0] == 'kMaXDeepLab':
    part = _PARTS.get(scopes[1], 'encoder') if len(scopes) > 2 else 'other model ops'
    return f'{part}, {direction}'
  return f'loss and unscoped, {direction}'


def op_seconds_by_part(logdir: str, steps: int):
  """{category: op-seconds per step}, {op type: op-seconds per step} of a profile."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2
  paths = sorted(glob.glob(os.path.join(logdir, '**', '*.xplane.pb'), recursive=True))
  if not paths:
    raise RuntimeError(f'no profile was written under {logdir}')
  space = xplane_pb2.XSpace()
  with open(paths[-1], 'rb') as file:
    space.ParseFromString(file.read())
  parts, types = collections.Counter(), collections.Counter()
  for plane in space.planes:
    if 'host' not in plane.name.lower():
      continue
    for line in plane.lines:
      for event in line.events:
        op_name, _, op_type = plane.event_metadata[event.metadata_id].name.rpartition(':')
        # Op events are "<op name>:<op type>"; executor and tf.data events are not ops.
        if (not op_name or op_type in _WRAPPER_EVENTS or not op_type.lstrip('_')[:1].isupper()
                or op_name.startswith(('Iterator', 'MakeIterator', 'Instantiated'))):
          continue
        seconds = event.duration_ps * 1e-12 / steps
        parts[_category(op_name)] += seconds
        if op_name.startswith(_LOOP_PREFIX):
          types[op_type] += seconds
  return parts, types


def _profile(name, command, env, cwd, logdir, steps):
  print(f'profiling {name} ...', flush=True)
  result = subprocess.run(
      [sys.executable, __file__, '--_child', logdir] + command, cwd=cwd, env=env,
      capture_output=True, text=True)
  if result.returncode != 0:
    raise RuntimeError(f'{name} failed ({result.returncode}):\n{result.stderr[-3000:]}')
  return op_seconds_by_part(logdir, steps)


def main():
  if len(sys.argv) > 2 and sys.argv[1] == '--_child':
    _child(sys.argv[2], sys.argv[3], sys.argv[4:])
    return
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--deeplab2_root', default=None)
  parser.add_argument('--crop', type=int, default=641)
  parser.add_argument('--steps', type=int, default=6)
  parser.add_argument('--top_ops', type=int, default=12)
  args = parser.parse_args()

  import train_step  # benchmarks/train_step.py: the same config and records.
  from google.protobuf import text_format

  work = pathlib.Path(tempfile.mkdtemp(prefix='kmax_train_profile_'))
  config_path = work / 'config.textproto'
  config_path.write_text(text_format.MessageToString(
      train_step.coco_config(args.crop, args.steps, steps_per_loop=2)))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', TF_USE_LEGACY_KERAS='1')
  env.pop('TF_CONFIG', None)
  profiles = {'kmax_tf': _profile(
      'kmax_tf', ['trainer/train.py', f'--config_file={config_path}', '--mode=train',
                  f'--model_dir={work / "ours"}'],
      dict(env, PYTHONPATH=str(REPO)), REPO, str(work / 'ours_profile'), args.steps)}
  if args.deeplab2_root:
    root = os.path.abspath(args.deeplab2_root)
    profiles['DeepLab2'] = _profile(
        'DeepLab2', ['deeplab2/trainer/train.py', f'--config_file={config_path}', '--mode=train',
                     f'--model_dir={work / "dl2"}', '--num_gpus=0'],
        dict(env, PYTHONPATH=os.pathsep.join([root, os.path.join(root, 'models')])), root,
        str(work / 'dl2_profile'), args.steps)

  names = list(profiles)
  categories = sorted({c for parts, _ in profiles.values() for c in parts},
                      key=lambda c: -profiles['kmax_tf'][0].get(c, 0.0))
  header = ''.join(f'{name:>12}' for name in names)
  print(f'\nop-seconds per step, COCO R50 released config, batch 1, crop {args.crop}, '
        f'{args.steps} steps (profiler on)')
  print(f'{"part":<46}{header}{"ratio" if len(names) > 1 else "":>8}')
  for rows in (categories, ['total']):
    for category in rows:
      values = [sum(parts.values()) if category == 'total' else parts.get(category, 0.0)
                for parts, _ in profiles.values()]
      ratio = f'{values[1] / values[0]:.2f}x' if len(values) > 1 and values[0] else ''
      print(f'{category:<46}' + ''.join(f'{v:12.2f}' for v in values) + f'{ratio:>8}')
  print('\ntop op types inside the training loop, op-seconds per step')
  for op_type, _ in profiles['kmax_tf'][1].most_common(args.top_ops):
    print(f'{op_type:<46}' + ''.join(f'{types.get(op_type, 0.0):12.2f}'
                                     for _, types in profiles.values()))
  print('(ratio = DeepLab2 / kmax_tf: above 1, ours spends less op time there)')
  print(f'load average at the end: {os.getloadavg()[0]:.1f}')


if __name__ == '__main__':
  main()
