"""Benchmark: per-image latency of the exported SavedModel vs the in-process model.

Builds a kMaX-DeepLab (random weights; latency does not depend on them),
exports it with `kmax_tf.export.serving`, loads the SavedModel back and times,
for the same photo-sized uint8 image:

* in-process network: `model(padded_crop)` in a tf.function (network and
  post-processing at the eval crop only; what evaluation runs per image);
* in-process pipeline: the serving module's `serve_images` tf.function
  (in-graph resize + pad, network, crop + resize back to the image size);
* SavedModel `serving_default` (uint8 tensor, the same pipeline, loaded);
* SavedModel `image_bytes` (the same plus JPEG decoding);
* SavedModel `serving_default` with a batch of `--batch` images (per image);
* the same pipeline exported by `kmax_tf.export.portable` and run through its
  runtime's Python API: LiteRT (ai-edge-litert) float32, float16 and dynamic
  int8, and ONNX Runtime (CPU), each one image per call (`--formats`).

Each is warmed up, then run `--repeats` times interleaved; the table gives the
median wall time per image and the ratio to the in-process pipeline and to
the SavedModel. The maps of the SavedModel and of the in-process pipeline must
be identical, or the script fails; each other format's share of pixels equal
to the SavedModel's map is printed.

Default model: the COCO R50 architecture (134 classes, 128 mask slots) at a
257x257 eval crop; `--crop=641` gives the released inference size.

Usage: python benchmarks/export_latency.py [--crop=257] [--repeats=7]
           [--image_size=480,640] [--batch=4] [--formats=tflite,tflite_float16,
           tflite_dynamic_int8,onnx] [--threads=N]
"""

import argparse
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

# --formats names: (row label, export format, quantization).
_PORTABLE = {
    'tflite': ('LiteRT float32', 'tflite', 'none'),
    'tflite_float16': ('LiteRT float16', 'tflite', 'float16'),
    'tflite_dynamic_int8': ('LiteRT dynamic int8', 'tflite', 'dynamic_int8'),
    'onnx': ('ONNX Runtime float32', 'onnx', 'none'),
}

_CONFIG = os.path.join(_REPO_ROOT, 'configs', 'coco', 'kmax_meta_r50_os32.textproto')


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


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--crop', type=int, default=257)
  parser.add_argument('--image_size', default='480,640')
  parser.add_argument('--repeats', type=int, default=7)
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--config', default=_CONFIG)
  parser.add_argument('--formats', default=','.join(_PORTABLE),
                      help='portable formats to add (comma-separated; empty for none)')
  parser.add_argument('--threads', type=int, default=None,
                      help='LiteRT / ONNX Runtime threads (default: their own)')
  args = parser.parse_args()
  formats = [name for name in args.formats.split(',') if name]
  unknown = sorted(set(formats) - set(_PORTABLE))
  if unknown:
    raise SystemExit(f'--formats: unknown {unknown}; choose from {sorted(_PORTABLE)}')
  height, width = (int(v) for v in args.image_size.split(','))

  print(f'Building {os.path.basename(args.config)} at crop {args.crop} ...', flush=True)
  module = serving.build_serving_module(args.config, None, overrides=_overrides(args.crop))
  image = _image(height, width)
  batch = np.stack([image] * args.batch)
  jpeg = tf.io.encode_jpeg(image, quality=95).numpy()

  network = tf.function(lambda crop: module.model(crop, training=False)['panoptic_pred'])
  padded = preprocessing.preprocess_batch(tf.constant(image[None]), module.spec)
  with tempfile.TemporaryDirectory() as folder:
    start = time.perf_counter()
    version_dir = serving.save_module(module, os.path.join(folder, 'kmax'))
    save_seconds = time.perf_counter() - start
    start = time.perf_counter()
    loaded = tf.saved_model.load(version_dir)
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
    convert_seconds, agreement = {}, {}
    for name in formats:
      label, export_format, quantization = _PORTABLE[name]
      start = time.perf_counter()
      data = (portable.convert_tflite(module, quantization) if export_format == 'tflite'
              else portable.convert_onnx(module))
      convert_seconds[label] = time.perf_counter() - start
      path = portable.write_model_file(
          data, portable.file_metadata(module, export_format, quantization),
          os.path.join(folder, name), portable.MODEL_FILES[export_format])
      load = runtimes.load_tflite if export_format == 'tflite' else runtimes.load_onnx
      serve = load(path, args.threads)[0]
      cases[label] = lambda serve=serve: serve(image[None])['panoptic_pred'].numpy()
      reference = serving_default(images=tf.constant(image[None]))['panoptic_pred'].numpy()
      agreement[label] = float(np.mean(cases[label]() == reference))
    per_image = {name: (args.batch if 'batch of' in name else 1) for name in cases}
    ours = module.serve_images(image[None])['panoptic_pred'].numpy()
    exported = serving_default(images=tf.constant(image[None]))['panoptic_pred'].numpy()
    if not np.array_equal(ours, exported):
      raise SystemExit('SavedModel maps differ from the in-process pipeline.')
    for fn in cases.values():  # Warm-up (tracing, first-call allocations).
      fn()
      fn()
    times = {name: [] for name in cases}
    for _ in range(args.repeats):
      for name, fn in cases.items():
        _time(fn, times[name])

  baseline = statistics.median(times['in-process pipeline'])
  saved_model = statistics.median(times['SavedModel serving_default'])
  print(f'\nimage {height}x{width}, eval crop {args.crop}, {args.repeats} runs, '
        f'{os.cpu_count()} CPU cores; SavedModel save {save_seconds:.1f} s, '
        f'load {load_seconds:.1f} s')
  for label, seconds in convert_seconds.items():
    print(f'{label}: conversion {seconds:.1f} s, {100 * agreement[label]:.3f}% of pixels as '
          'the SavedModel')
  print(f'{"case":34s} {"median ms/image":>16s} {"min ms/image":>13s} {"vs pipeline":>12s} '
        f'{"vs SavedModel":>14s}')
  for name, values in times.items():
    median = statistics.median(values) / per_image[name]
    print(f'{name:34s} {1000 * median:16.1f} {1000 * min(values) / per_image[name]:13.1f} '
          f'{median / baseline:11.2f}x {median / saved_model:13.2f}x')


if __name__ == '__main__':
  main()
