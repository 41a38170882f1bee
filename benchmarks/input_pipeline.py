"""Throughput of the training input pipeline (images/s) on this machine.

Writes a few hundred synthetic COCO-like records (640x480 JPEG, raw panoptic
label with stuff bands and thing instances) into a temporary directory, then
times `build_dataset` in training mode at crop 641 for:

  decode only       reading + JPEG/label decoding (the baseline of the ratios)
  geometric aug     resize-to-range 641, random scale 0.3-1.7, crop, flip
  full kMaX COCO    + autoaugment, panoptic copy-paste, thing-id targets
                    (the augmentation of DeepLab2's kMaX COCO configs)

Each configuration runs `--runs` times (fresh pipeline each run, warm-up
batches not timed) and the median is reported.

Usage: python benchmarks/input_pipeline.py [--num-records 240] [--runs 3]
"""

import argparse
import io
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from PIL import Image  # noqa: E402

from kmax_tf.data import dataset_descriptors  # noqa: E402
from kmax_tf.data import input_pipeline  # noqa: E402
from kmax_tf.data import tfrecord_decoder  # noqa: E402
from kmax_tf.protos import dataset_pb2  # noqa: E402

_HEIGHT, _WIDTH = 480, 640
_DIVISOR = 256

_CONFIGS = {
    'decode only': None,
    'geometric aug': """
      crop_size: 641 crop_size: 641 min_resize_value: 641 min_resize_value: 641
      max_resize_value: 641 max_resize_value: 641
      augmentations { min_scale_factor: 0.3 max_scale_factor: 1.7 scale_factor_step_size: 0.1 }
    """,
    'full kMaX COCO': """
      crop_size: 641 crop_size: 641 min_resize_value: 641 min_resize_value: 641
      max_resize_value: 641 max_resize_value: 641 thing_id_mask_annotations: true
      augmentations {
        min_scale_factor: 0.3 max_scale_factor: 1.7 scale_factor_step_size: 0.1
        autoaugment_policy_name: "simple_classification_policy"
        panoptic_copy_paste { panoptic_copy_paste_scale: 0.5
          panoptic_copy_paste_thing_option: "all" panoptic_copy_paste_stuff_option: "random"
          panoptic_copy_paste_void_option: "none" }
      }
    """,
}


def _synthetic_example(rng: np.random.Generator, index: int) -> tf.train.Example:
  """A 640x480 image with stuff bands, 4-12 thing instances and a void strip."""
  panoptic = np.zeros((_HEIGHT, _WIDTH), np.int32)
  edges = np.sort(rng.integers(0, _HEIGHT, 3))
  for start in [0, *edges]:
    panoptic[start:] = int(rng.integers(81, 134)) * _DIVISOR
  ys, xs = np.mgrid[0:_HEIGHT, 0:_WIDTH]
  for instance in range(1, int(rng.integers(4, 13)) + 1):
    cy, cx = rng.integers(0, _HEIGHT), rng.integers(0, _WIDTH)
    ry, rx = rng.integers(10, 120), rng.integers(10, 160)
    inside = ((ys - cy) / ry)**2 + ((xs - cx) / rx)**2 <= 1
    panoptic[inside] = int(rng.integers(1, 81)) * _DIVISOR + instance
  panoptic[:, :8] = 0
  colours = rng.integers(0, 256, size=(134 * _DIVISOR + 16, 3), dtype=np.uint8)
  image = colours[panoptic] + rng.integers(0, 20, size=(_HEIGHT, _WIDTH, 3), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='JPEG', quality=90)
  return tfrecord_decoder.make_tf_example(buffer.getvalue(), 'jpeg', f'{index:012d}', _HEIGHT,
                                          _WIDTH, panoptic)


def write_records(directory: str, num_records: int, num_shards: int = 8) -> str:
  rng = np.random.default_rng(0)
  examples = [_synthetic_example(rng, i) for i in range(num_records)]
  for shard in range(num_shards):
    tfrecord_decoder.write_tfrecord(
        os.path.join(directory, f'train-{shard:05d}-of-{num_shards:05d}.tfrecord'),
        examples[shard::num_shards])
  return os.path.join(directory, 'train-*.tfrecord')


def _decode_only_dataset(pattern: str, batch_size: int) -> tf.data.Dataset:
  decoder = tfrecord_decoder.TFRecordDecoder(
      dataset_descriptors.get_dataset_descriptor('coco_panoptic'))
  files = input_pipeline.resolve_file_patterns([pattern])
  dataset = tf.data.Dataset.from_tensor_slices(files).repeat().interleave(
      tf.data.TFRecordDataset, cycle_length=len(files), num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.map(decoder, num_parallel_calls=tf.data.AUTOTUNE)
  # Keep the batch shape-agnostic: reduce every image to its mean.
  dataset = dataset.map(lambda d: tf.reduce_mean(tf.cast(d['image'], tf.float32)))
  return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _time_run(dataset: tf.data.Dataset, batch_size: int, warmup: int, batches: int):
  """Returns (images per wall-clock second, images per CPU second of this process)."""
  iterator = iter(dataset)
  for _ in range(warmup):
    next(iterator)
  start, start_cpu = time.perf_counter(), time.process_time()
  for _ in range(batches):
    next(iterator)
  images = batches * batch_size
  return (images / (time.perf_counter() - start), images / (time.process_time() - start_cpu))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--num-records', type=int, default=240)
  parser.add_argument('--batch-size', type=int, default=8)
  parser.add_argument('--batches', type=int, default=12, help='timed batches per run')
  parser.add_argument('--warmup', type=int, default=3, help='untimed batches per run')
  parser.add_argument('--runs', type=int, default=3)
  args = parser.parse_args(argv)

  descriptor = dataset_descriptors.get_dataset_descriptor('coco_panoptic')
  results = {}
  with tempfile.TemporaryDirectory() as directory:
    start = time.perf_counter()
    pattern = write_records(directory, args.num_records)
    print(f'wrote {args.num_records} synthetic 640x480 records in '
          f'{time.perf_counter() - start:.1f} s', flush=True)
    for name, text in _CONFIGS.items():
      rates = []
      for run in range(args.runs):
        if text is None:
          dataset = _decode_only_dataset(pattern, args.batch_size)
        else:
          options = text_format.Parse(text, dataset_pb2.DatasetOptions())
          options.dataset = 'coco_panoptic'
          options.file_pattern.append(pattern)
          options.batch_size = args.batch_size
          dataset = input_pipeline.build_dataset(options, descriptor, is_training=True,
                                                 seed=run)
        rates.append(_time_run(dataset, args.batch_size, args.warmup, args.batches))
        print(f'  {name}: run {run + 1}: {rates[-1][0]:.1f} images/s, '
              f'{rates[-1][1]:.1f} images per CPU-second', flush=True)
      results[name] = rates

  baseline = statistics.median(rate for rate, _ in results['decode only'])
  print()
  print(f'Training input pipeline, crop 641, batch {args.batch_size}, {os.cpu_count()} CPU '
        f'cores (load average {os.getloadavg()[0]:.1f}), median of {args.runs} runs x '
        f'{args.batches} batches')
  print('images/CPU-s divides by the CPU time this process got, which stays meaningful when '
        'other processes share the cores.')
  print(f'{"configuration":<18} {"images/s":>9} {"min":>7} {"max":>7} {"vs decode":>10} '
        f'{"images/CPU-s":>13}')
  for name, rates in results.items():
    wall = [rate for rate, _ in rates]
    median = statistics.median(wall)
    per_cpu = statistics.median(rate for _, rate in rates)
    print(f'{name:<18} {median:9.1f} {min(wall):7.1f} {max(wall):7.1f} '
          f'{median / baseline:10.2f} {per_cpu:13.1f}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
