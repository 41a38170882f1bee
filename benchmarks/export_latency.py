"""Benchmark: per-image latency of every export format vs the SavedModel.

Default: the COCO R50 model (configs/coco/kmax_meta_r50_os32.textproto, 134
classes, 128 mask slots, maskwise post-processing with area limits) at the
641x641 eval crop, on a 480x640 photo (resized to 481x641 and padded to
641x641 in-graph). Weights are random (latency does not depend on them:
the post-processing's loops and counts have static sizes), sharpened by
`tests/helpers/sharpened_model.py`: on the slim test model that makes masks and classes pass the
thresholds; on COCO R50 (128 slots, 134 classes) it is not enough, its maps
are void and the printed map agreement is trivial there (parity on real
maps: tests/export, benchmarks/export_pq.py). Rows, each for the same image:

* in-process network: `model(padded_crop)` in a tf.function (network and
  post-processing at the eval crop only; what evaluation runs per image);
* in-process pipeline: the serving module's `serve_images` tf.function
  (in-graph resize + pad, network, crop + resize back to the image size);
* SavedModel `serving_default` (uint8 tensor, the same pipeline, loaded);
* SavedModel `image_bytes` (the same plus JPEG decoding);
* SavedModel `serving_default` with a batch of `--batch` images (per image);
* the same pipeline exported by `kmax_tf.export.portable` and run through its
  runtime's Python API (`kmax_tf.export.runtimes`): LiteRT (ai-edge-litert)
  float32, float16 and dynamic int8, and ONNX Runtime (CPU), one image per
  call (`--formats`), each with `--threads` threads (default: all cores).

Two phases: exporting (the checkpoint, the SavedModel and each portable file;
minutes and several GB at 641, not timed) and timing (every row warmed up,
then `--repeats` rounds, rows interleaved within a round). The table gives
the median and minimum wall time per image and the ratios to the in-process
pipeline and to the SavedModel, with the load average before and after the
timing. The SavedModel's maps must equal the in-process pipeline's, or the
script fails; each other format's share of pixels equal to the SavedModel's
map is printed, and each LiteRT file's operators are checked to be builtin
(no select TF / custom ops).

With `--work_dir` the exports are kept there and reused by later runs, so
they can be made once while the machine is busy (`--export_only`) and timed
later on a quiet machine. A format whose file is missing is exported first.

Usage: python benchmarks/export_latency.py [--crop=641] [--repeats=7]
           [--image_size=480,640] [--batch=4] [--formats=tflite,tflite_float16,
           tflite_dynamic_int8,onnx] [--threads=N] [--work_dir=DIR [--export_only]]
"""

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO_ROOT)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kmax_tf.export import portable  # noqa: E402
from kmax_tf.export import preprocessing  # noqa: E402
from kmax_tf.export import runtimes  # noqa: E402
from kmax_tf.export import serving  # noqa: E402
from kmax_tf.keras_setup import keras  # noqa: E402
from tests.helpers import sharpened_model  # noqa: E402

# --formats names: (row label, export format, quantization).
_PORTABLE = {
    'tflite': ('LiteRT float32', 'tflite', 'none'),
    'tflite_float16': ('LiteRT float16', 'tflite', 'float16'),
    'tflite_dynamic_int8': ('LiteRT dynamic int8', 'tflite', 'dynamic_int8'),
    'onnx': ('ONNX Runtime float32', 'onnx', 'none'),
}

_CONFIG = os.path.join(_REPO_ROOT, 'configs', 'coco', 'kmax_meta_r50_os32.textproto')
# Random weights are sharpened with tests/helpers/sharpened_model.py's gains. On
# COCO R50 at 641 the top mask probability stays below 0.06 and the median class
# confidence ~0.11 (void); gains of 2000 and 6000 gave 19 labels, 12% void
# (in-process, not yet timed).


def _overrides(crop):
  return [f'{split}_dataset_options.{field}={crop},{crop}'
          for split in ('train', 'eval')
          for field in ('crop_size', 'min_resize_value', 'max_resize_value')]


def _image(height, width, seed=0):
  try:
    from skimage import data
    photo = data.astronaut()
    return tf.image.resize(photo, (height, width), antialias=True).numpy().astype(np.uint8)
  except ImportError:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _time(fn, repeats_list):
  start = time.perf_counter()
  fn()
  repeats_list.append(time.perf_counter() - start)


def _load_average():
  return ', '.join(f'{value:.2f}' for value in os.getloadavg())


def _tflite_operators(path):
  """Sorted names of the operators in a LiteRT file; fails on custom (select TF) ops."""
  from ai_edge_litert import schema_py_generated as schema_fb
  with open(path, 'rb') as f:
    model = schema_fb.Model.GetRootAs(f.read(), 0)
  names = {value: name for name, value in vars(schema_fb.BuiltinOperator).items()
           if not name.startswith('_')}
  operators = set()
  for index in range(model.OperatorCodesLength()):
    code = model.OperatorCodes(index)
    builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    if builtin == schema_fb.BuiltinOperator.CUSTOM:
      raise SystemExit(f'{path}: custom / select TF op {code.CustomCode()!r}')
    operators.add(names[builtin])
  return sorted(operators)


def _export_folder(args, work_dir):
  """One folder per config and crop: a reused export always matches the flags."""
  return os.path.join(work_dir, f'{os.path.splitext(os.path.basename(args.config))[0]}'
                      f'_crop{args.crop}')


def _export(args, formats, work_dir):
  """Writes (or reuses) the checkpoint, SavedModel and portable files in work_dir.

  Returns:
    (checkpoint prefix, SavedModel version dir, {format name: model file},
     {row label: export seconds}).
  """
  checkpoint = os.path.join(work_dir, 'ckpt', 'model')
  saved_model_dir = os.path.join(work_dir, 'saved_model', '1')
  files = {name: os.path.join(work_dir, name, '1', portable.MODEL_FILES[_PORTABLE[name][1]])
           for name in formats}
  seconds = {}
  missing = [name for name in formats if not os.path.isfile(files[name])]
  has_checkpoint = tf.io.gfile.exists(checkpoint + '.index')
  if has_checkpoint and not missing and os.path.isdir(saved_model_dir):
    return checkpoint, saved_model_dir, files, seconds
  print(f'Exporting {os.path.basename(args.config)} at crop {args.crop} to {work_dir} ...',
        flush=True)
  if has_checkpoint:
    module = serving.build_serving_module(args.config, checkpoint,
                                          overrides=_overrides(args.crop))
  else:
    keras.utils.set_random_seed(0)
    module = serving.build_serving_module(args.config, None, overrides=_overrides(args.crop))
    sharpened_model.sharpen(module.model)
    tf.train.Checkpoint(**module.model.checkpoint_items).write(checkpoint)
  if not os.path.isdir(saved_model_dir):
    start = time.perf_counter()
    serving.save_module(module, saved_model_dir)
    seconds['SavedModel'] = time.perf_counter() - start
  for name in missing:
    label, export_format, quantization = _PORTABLE[name]
    print(f'  {label} ...', flush=True)
    start = time.perf_counter()
    data = (portable.convert_tflite(module, quantization) if export_format == 'tflite'
            else portable.convert_onnx(module))
    portable.write_model_file(data, portable.file_metadata(module, export_format, quantization),
                              os.path.dirname(files[name]), portable.MODEL_FILES[export_format])
    seconds[label] = time.perf_counter() - start
  return checkpoint, saved_model_dir, files, seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--crop', type=int, default=641)
  parser.add_argument('--image_size', default='480,640')
  parser.add_argument('--repeats', type=int, default=7)
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--config', default=_CONFIG)
  parser.add_argument('--formats', default=','.join(_PORTABLE),
                      help='portable formats to add (comma-separated; empty for none)')
  parser.add_argument('--threads', type=int, default=os.cpu_count(),
                      help='LiteRT / ONNX Runtime threads (default: all cores, as TensorFlow)')
  parser.add_argument('--work_dir', default=None,
                      help='keep the exports here and reuse them (default: a temporary folder)')
  parser.add_argument('--export_only', action='store_true',
                      help='only write the exports to --work_dir, do not time')
  args = parser.parse_args()
  formats = [name for name in args.formats.split(',') if name]
  unknown = sorted(set(formats) - set(_PORTABLE))
  if unknown:
    raise SystemExit(f'--formats: unknown {unknown}; choose from {sorted(_PORTABLE)}')
  if args.export_only and not args.work_dir:
    raise SystemExit('--export_only needs --work_dir (where the exports are kept).')
  height, width = (int(v) for v in args.image_size.split(','))

  with contextlib.ExitStack() as stack:
    work_dir = args.work_dir or stack.enter_context(tempfile.TemporaryDirectory())
    work_dir = _export_folder(args, work_dir)
    checkpoint, saved_model_dir, files, export_seconds = _export(args, formats, work_dir)
    for label, seconds in export_seconds.items():
      print(f'{label}: export {seconds:.1f} s')
    if args.export_only:
      print(f'Exports in {work_dir}; time them with the same flags without --export_only.')
      return
    _time_formats(args, formats, checkpoint, saved_model_dir, files, height, width)


def _time_formats(args, formats, checkpoint, saved_model_dir, files, height, width):
  """Loads every export, checks the maps, times all rows and prints the table."""
  print(f'Loading {os.path.basename(args.config)} at crop {args.crop} ...', flush=True)
  module = serving.build_serving_module(args.config, checkpoint, overrides=_overrides(args.crop))
  image = _image(height, width)
  batch = np.stack([image] * args.batch)
  jpeg = tf.io.encode_jpeg(image, quality=95).numpy()
  network = tf.function(lambda crop: module.model(crop, training=False)['panoptic_pred'])
  padded = preprocessing.preprocess_batch(tf.constant(image[None]), module.spec)
  start = time.perf_counter()
  loaded = tf.saved_model.load(saved_model_dir)
  load_seconds = time.perf_counter() - start
  serving_default = loaded.signatures['serving_default']
  image_bytes = loaded.signatures['image_bytes']
  cases = {
      'in-process network at crop': lambda: network(padded).numpy(),
      'in-process pipeline': lambda: module.serve_images(image[None])['panoptic_pred'].numpy(),
      'SavedModel serving_default': lambda: serving_default(
          images=tf.constant(image[None]))['panoptic_pred'].numpy(),
      'SavedModel image_bytes (JPEG)': lambda: image_bytes(
          image_bytes=tf.constant([jpeg]))['panoptic_pred'].numpy(),
      f'SavedModel batch of {args.batch}': lambda: serving_default(
          images=tf.constant(batch))['panoptic_pred'].numpy(),
  }
  reference = serving_default(images=tf.constant(image[None]))['panoptic_pred'].numpy()
  ours = module.serve_images(image[None])['panoptic_pred'].numpy()
  if not np.array_equal(ours, reference):
    raise SystemExit('SavedModel maps differ from the in-process pipeline.')
  segments = len(np.unique(reference))
  if segments == 1:
    print('Note: the SavedModel map is one label (void with these random weights): the '
          'map agreement below is trivial.')
  agreement, operators = {}, {}
  for name in formats:
    label, export_format, _ = _PORTABLE[name]
    load = runtimes.load_tflite if export_format == 'tflite' else runtimes.load_onnx
    serve = load(files[name], args.threads)[0]
    cases[label] = lambda serve=serve: serve(image[None])['panoptic_pred'].numpy()
    agreement[label] = float(np.mean(cases[label]() == reference))
    if export_format == 'tflite':
      operators[label] = _tflite_operators(files[name])
  per_image = {name: (args.batch if 'batch of' in name else 1) for name in cases}
  for fn in cases.values():  # Warm-up (tracing, first-call allocations).
    fn()
    fn()
  load_before = _load_average()
  times = {name: [] for name in cases}
  for _ in range(args.repeats):
    for name, fn in cases.items():
      _time(fn, times[name])
  load_after = _load_average()

  baseline = statistics.median(times['in-process pipeline'])
  saved_model = statistics.median(times['SavedModel serving_default'])
  print(f'\n{os.path.basename(args.config)}, image {height}x{width}, eval crop '
        f'{args.crop}x{args.crop}, {args.repeats} runs, {os.cpu_count()} CPU cores, '
        f'LiteRT / ONNX Runtime threads {args.threads}; SavedModel load {load_seconds:.1f} s; '
        f'{segments} panoptic labels in the SavedModel map')
  print(f'load average (1, 5, 15 min) before timing: {load_before}; after: {load_after}')
  for label, value in agreement.items():
    print(f'{label}: {100 * value:.3f}% of pixels as the SavedModel')
  for label, names in operators.items():
    print(f'{label}: {len(names)} builtin operators, no select TF ops: {", ".join(names)}')
  print(f'{"case":34s} {"median ms/image":>16s} {"min ms/image":>13s} {"vs pipeline":>12s} '
        f'{"vs SavedModel":>14s}')
  for name, values in times.items():
    median = statistics.median(values) / per_image[name]
    print(f'{name:34s} {1000 * median:16.1f} {1000 * min(values) / per_image[name]:13.1f} '
          f'{median / baseline:11.2f}x {median / saved_model:13.2f}x')


if __name__ == '__main__':
  main()
