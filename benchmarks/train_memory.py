"""Peak tensor memory of one training step, this checkout beside another one.

Usage:
  python benchmarks/train_memory.py [--crop=641] [--repeats=3] [--baseline_repo=DIR]

Each run is a fresh process with TensorFlow's BFC allocator on the CPU
(`TF_CPU_ALLOCATOR_USE_BFC=true`, so `tf.config.experimental.get_memory_info`
reports live and peak bytes). It builds the released COCO R50 config's model,
loss and `Trainer` (batch 1 at `--crop`, augmentations on, the DeepLab2
reference TFRecords, two batches cached so the pipeline's cost is fixed), runs
one step to trace, then measures the second step:

  above live   peak during the step minus the tensors live before it (the
               activations, gradients and temporaries of the step itself)
  step peak    all live tensors at the peak (variables and Adam slots too)
  maxrss       the process's peak resident memory (graph, runtime, pipeline)

`--baseline_repo` is another kmax_tf checkout, for example an earlier commit
made with `git worktree add /tmp/base <rev>`; its package is imported instead
of this one, runs alternate, and the ratio column is ours / baseline (<1:
smaller). The step's peak depends on the order the executor runs ops in, so
single runs vary by a few percent: read medians.
"""

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
_RESULT_PREFIX = 'train_memory result: '


def _measure(code_dir: str, crop: int) -> dict:
  """One measurement with the kmax_tf package of `code_dir` (child process)."""
  os.environ['TF_CPU_ALLOCATOR_USE_BFC'] = 'true'
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
  sys.path.insert(0, code_dir)
  import kmax_tf  # noqa: F401  (first, so every kmax_tf module comes from code_dir)
  sys.path.insert(1, str(REPO / 'benchmarks'))
  import orbit
  import tensorflow as tf
  from train_step import coco_config

  from kmax_tf.data import dataset_descriptors
  from kmax_tf.data import input_pipeline
  from kmax_tf.losses import builder as loss_builder
  from kmax_tf.model import builder as model_builder
  from kmax_tf.training import trainer as trainer_lib

  config = coco_config(crop)
  options = config.train_dataset_options
  descriptor = dataset_descriptors.descriptor_from_options(options)
  dataset = input_pipeline.build_dataset(options, descriptor, is_training=True, seed=1)
  dataset = dataset.take(2).cache().repeat()
  with tf.distribute.OneDeviceStrategy('/cpu:0').scope():
    model = model_builder.build_model(config)
    loss = loss_builder.build_loss(config, num_auxiliary_outputs=model.auxiliary_output_number)
    step = orbit.utils.create_global_step()
    trainer = trainer_lib.Trainer(model, loss, dataset, config.trainer_options.solver_options,
                                  step, backbone=model.checkpoint_items['encoder'])
  trainer.train(tf.constant(1))  # Traces, creates the Adam slots.
  tf.config.experimental.reset_memory_stats('CPU:0')
  before = tf.config.experimental.get_memory_info('CPU:0')['current']
  trainer.train(tf.constant(1))
  peak = tf.config.experimental.get_memory_info('CPU:0')['peak']
  return {'above_live': (peak - before) / 2**30, 'step_peak': peak / 2**30,
          'maxrss': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
          'package': os.path.dirname(kmax_tf.__file__)}


def _run_child(code_dir: str, crop: int) -> dict:
  command = [sys.executable, __file__, f'--child={code_dir}', f'--crop={crop}']
  result = subprocess.run(command, capture_output=True, text=True)
  lines = [line for line in result.stdout.splitlines() if line.startswith(_RESULT_PREFIX)]
  if result.returncode != 0 or not lines:
    raise RuntimeError(f'measurement with {code_dir} failed ({result.returncode}):\n'
                       f'{result.stderr[-3000:]}')
  return json.loads(lines[-1][len(_RESULT_PREFIX):])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--crop', type=int, default=641)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--baseline_repo', default=None,
                      help='another kmax_tf checkout to measure alternately')
  parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(_RESULT_PREFIX + json.dumps(_measure(args.child, args.crop)), flush=True)
    return

  if args.repeats < 1:
    sys.exit(f'--repeats={args.repeats}: at least one run is needed')
  cases = {'kmax_tf (this checkout)': str(REPO)}
  if args.baseline_repo:
    baseline = os.path.abspath(args.baseline_repo)
    if not os.path.isfile(os.path.join(baseline, 'kmax_tf', '__init__.py')):
      sys.exit(f'--baseline_repo={baseline}: no kmax_tf package there')
    cases[f'baseline {baseline}'] = baseline
  runs = {name: [] for name in cases}
  for repeat in range(args.repeats):
    for name, code_dir in cases.items():
      result = _run_child(code_dir, args.crop)
      if os.path.realpath(result['package']) != os.path.realpath(os.path.join(code_dir, 'kmax_tf')):
        raise RuntimeError(f'{name}: imported kmax_tf from {result["package"]}')
      runs[name].append(result)
      print(f'  {name} run {repeat + 1}: {result["above_live"]:.3f} GB above live, '
            f'step peak {result["step_peak"]:.3f} GB, maxrss {result["maxrss"]:.2f} GB',
            flush=True)

  medians = {name: {key: statistics.median(r[key] for r in results)
                    for key in ('above_live', 'step_peak', 'maxrss')}
             for name, results in runs.items()}
  baseline = medians[list(cases)[-1]]
  print(f'\n{"case":58s} {"above live GB":>13s} {"step peak GB":>12s} {"maxrss GB":>9s} '
        f'{"ratio":>6s}')
  for name, median in medians.items():
    print(f'{name[:58]:58s} {median["above_live"]:13.3f} {median["step_peak"]:12.3f} '
          f'{median["maxrss"]:9.2f} {median["above_live"] / baseline["above_live"]:5.2f}x')
  print(f'(COCO R50 released config, batch 1, crop {args.crop}, the second training step; '
        f'median of {args.repeats} runs; ratio = above live / the last row\'s.)')
  print(f'load average at the end: {os.getloadavg()[0]:.1f}')


if __name__ == '__main__':
  main()
