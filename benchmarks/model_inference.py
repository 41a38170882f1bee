"""Benchmark: kMaX-DeepLab COCO R50 inference (with post-processing) on this CPU.

Builds the released COCO ResNet-50 config at a 641x641 crop, loads the
reference weights (README weight rule + calibrated BatchNorm statistics, so
that the maskwise post-processing has real segments to paste), and times
`model(image, training=False)` for a batch of one, including the panoptic
post-processing, in three modes:

* eager: plain Keras call;
* tf.function: the call traced once into a graph;
* XLA: `tf.function(jit_compile=True)`;
* tf.function bf16: extra row, the same weights in a model built under the
  Keras `mixed_bfloat16` policy (the library's `mixed_precision_policy`
  option; this CPU has AVX512_BF16). Not the headline: its numbers differ.

With `--deeplab2_root` (a directory holding a DeepLab2 checkout as the package
`deeplab2`, protos compiled; see tests/helpers/deeplab2_model.py) DeepLab2's own model,
restored from the same weights, runs side by side as the baseline rows
'DL2 eager' and 'DL2 tf.function'.

Each mode is warmed up (tracing/compilation excluded), then the modes are run
in turn (A, B, C, A, B, C, ...) `--runs` times, so that load from other jobs
spreads evenly; the table gives the median wall time, the median CPU time of this
process (TF threads included; a fairer figure when other jobs share the
cores), the wall-time speed-up over DeepLab2's tf.function figure on this
machine type (0.915 s; eager 1.88 s) and, with `--deeplab2_root`, over the
DeepLab2 tf.function time measured in the same run. It also reports the
fraction of panoptic pixels each mode shares with eager: the weights are
synthetic, with BatchNorm statistics calibrated at 129x129, so at 641x641 the
hard k-means assignments sit near ties and float rounding flips them (DeepLab2's
own eager and tf.function outputs share about 8 % of the pixels there; the
parity tests check agreement at the calibrated crop instead).

Usage: python benchmarks/model_inference.py [--runs=5] [--crop=641] [--no_bf16]
         [--deeplab2_root=DIR]
"""

import argparse
import os
import statistics
import sys
import time

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO_ROOT)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')  # before TensorFlow: DeepLab2 needs Keras 2

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kmax_tf import common  # noqa: E402
from kmax_tf.config import loader  # noqa: E402
from kmax_tf.keras_setup import keras  # noqa: E402
from kmax_tf.model import builder  # noqa: E402
from tests.helpers import deeplab2_model  # noqa: E402
from tests.helpers import dl2_checkpoint  # noqa: E402

_CONFIG = os.path.join(_REPO_ROOT, 'configs', 'coco', 'kmax_meta_r50_os32.textproto')
_REFERENCE = os.environ.get('KMAX_DL2_REFERENCE',
                            os.path.join(os.path.dirname(_REPO_ROOT), 'shared', 'dl2_reference'))
# DeepLab2 on this machine (TF 2.20 + tf_keras), COCO R50 641x641, batch 1, with post-processing.
_DEEPLAB2_SECONDS = {'eager': 1.88, 'tf.function': 0.915}
_MANIFEST = os.path.join(_REFERENCE, 'manifests', 'coco_r50.tsv')
_MOVING_STATS = os.path.join(_REFERENCE, 'forward', 'coco_r50_129x129_moving_stats.npz')
_GOAL_SPEEDUP = 1.5


def _voronoi_image(height, width, seed=1, regions=12):
  """The reference README's synthetic test image, float32 [1, H, W, 3] in [0, 255]."""
  rng = np.random.default_rng(seed)
  points = rng.uniform(0, 1, (regions, 2)) * [height, width]
  colors = rng.integers(0, 256, (regions, 3)).astype(np.float64)
  yy, xx = np.mgrid[:height, :width]
  distances = (yy[..., None] - points[:, 0]) ** 2 + (xx[..., None] - points[:, 1]) ** 2
  image = colors[distances.argmin(-1)] + rng.normal(0, 8.0, (height, width, 3))
  return np.clip(np.round(image), 0, 255).astype(np.float32)[None]


def _build_model(crop, policy='float32'):
  """The restored COCO R50 model, built under the Keras dtype policy `policy`."""
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy(policy)
  try:
    return _build_float32_or_mixed_model(crop)
  finally:
    keras.mixed_precision.set_global_policy(previous)


def _build_float32_or_mixed_model(crop):
  substitutions = {name: '' for name in
                   ('EXPERIMENT_NAME', 'INIT_CHECKPOINT', 'TRAIN_SET', 'VAL_SET')}
  config = loader.load_config(
      _CONFIG, substitutions=substitutions,
      overrides=[f'train_dataset_options.crop_size={crop},{crop}',
                 f'eval_dataset_options.crop_size={crop},{crop}'])
  model = builder.build_model(config)
  dl2_checkpoint.restore_reference(model.checkpoint_items, _MANIFEST, _MOVING_STATS)
  return model


def _cpu_seconds():
  times = os.times()
  return times.user + times.system


def _run_once(function, image):
  """(wall s, CPU s, outputs) of one call, outputs fetched to host memory."""
  wall, cpu = time.perf_counter(), _cpu_seconds()
  outputs = function(image)
  outputs[common.PRED_PANOPTIC_KEY].numpy()
  return time.perf_counter() - wall, _cpu_seconds() - cpu, outputs


def _time_interleaved(functions, image, runs):
  """{mode: (median wall s, median CPU s, last outputs)}, modes run in turn."""
  samples = {mode: ([], []) for mode in functions}
  outputs = {}
  for mode, function in functions.items():  # warm-up: tracing / compilation
    _, _, outputs[mode] = _run_once(function, image)
  for _ in range(runs):
    for mode, function in functions.items():
      wall, cpu, outputs[mode] = _run_once(function, image)
      samples[mode][0].append(wall)
      samples[mode][1].append(cpu)
  return {mode: (statistics.median(walls), statistics.median(cpus), outputs[mode])
          for mode, (walls, cpus) in samples.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--runs', type=int, default=5)
  parser.add_argument('--crop', type=int, default=641)
  parser.add_argument('--no_bf16', action='store_true', help='skip the bfloat16 row')
  parser.add_argument('--deeplab2_root', default=None,
                      help='directory with a DeepLab2 checkout (package deeplab2, protos '
                           'compiled): time DeepLab2 side by side')
  args = parser.parse_args()

  start = time.perf_counter()
  model = _build_model(args.crop)
  bf16_model = None if args.no_bf16 else _build_model(args.crop, 'mixed_bfloat16')
  deeplab2 = None
  if args.deeplab2_root:
    deeplab2 = deeplab2_model.build_deeplab2_model(
        os.path.abspath(args.deeplab2_root), _CONFIG, (args.crop, args.crop))
    deeplab2_model.restore_reference_weights(deeplab2, _MANIFEST, _MOVING_STATS)
  print(f'models built and restored in {time.perf_counter() - start:.1f} s')
  image = tf.constant(_voronoi_image(args.crop, args.crop))
  modes = {
      'eager': lambda x: model(x, training=False),
      'tf.function': tf.function(lambda x: model(x, training=False)),
      'XLA': tf.function(lambda x: model(x, training=False), jit_compile=True),
  }
  if bf16_model is not None:
    modes['tf.fn bf16'] = tf.function(lambda x: bf16_model(x, training=False))
  if deeplab2 is not None:
    modes['DL2 eager'] = lambda x: deeplab2(x, training=False)
    modes['DL2 tf.function'] = tf.function(lambda x: deeplab2(x, training=False))
  timings = _time_interleaved(modes, image, args.runs)
  rows, panoptic = [], {}
  for mode, (wall, cpu, outputs) in timings.items():
    panoptic[mode] = outputs[common.PRED_PANOPTIC_KEY].numpy()
    rows.append((mode, wall, cpu))
  segments = len(np.unique(panoptic['eager']))
  agreement = {mode: float(np.mean(value == panoptic['eager'])) for mode, value in panoptic.items()}

  baseline = _DEEPLAB2_SECONDS['tf.function']
  measured = timings['DL2 tf.function'][0] if deeplab2 is not None else None
  print(f'\nCOCO R50 {args.crop}x{args.crop}, batch 1, inference + post-processing, '
        f'median of {args.runs} runs ({segments} panoptic segments)')
  print(f'{"mode":<16} {"wall s":>7} {"CPU s":>6} {"vs DL2 tf.fn " + str(baseline) + " s":>22} '
        f'{"vs DL2 tf.fn here":>18} {"= eager px":>11}')
  for mode, wall, cpu in rows:
    here = f'{measured / wall:.2f}x' if measured else '-'
    print(f'{mode:<16} {wall:7.3f} {cpu:6.2f} {baseline / wall:21.2f}x {here:>18} '
          f'{agreement[mode]:10.1%}')
  ours = [(wall, mode) for mode, wall, _ in rows if mode in ('eager', 'tf.function', 'XLA')]
  best, best_mode = min(ours)
  print(f'goal: >= {_GOAL_SPEEDUP}x faster than DeepLab2 tf.function, i.e. <= '
        f'{baseline / _GOAL_SPEEDUP:.3f} s against the {baseline} s figure; best float32 here: '
        f'{best_mode} {best:.3f} s ({baseline / best:.2f}x)' +
        (f', {measured / best:.2f}x against DeepLab2 measured here ({measured:.3f} s)'
         if measured else ''))


if __name__ == '__main__':
  main()
