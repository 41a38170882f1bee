"""Benchmark: PQ of every export format on an evaluation split, vs the SavedModel.

Builds the model of `--config` from `--checkpoint` once, exports it in-process
as a SavedModel and as LiteRT float32 / float16 / dynamic int8 and ONNX
(`kmax_tf.export.portable`), runs each through `kmax_tf.Predictor` on every
raw image of the config's eval split, and scores the panoptic maps with the
evaluator's PQ metric (crowd regions as in evaluation). Prints, per format,
PQ / SQ / RQ, the change vs the SavedModel and the share of pixels whose
panoptic label equals the SavedModel's.

Usage (the embedded demo, trained by the README's command):
  python benchmarks/export_pq.py --config=configs/demo/kmax_demo.textproto \
      --checkpoint=runs/demo/kmax_demo [--data_dir=.]
`--data_dir` is where the config's relative file patterns are resolved.
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO_ROOT)

import tensorflow as tf  # noqa: E402

from kmax_tf import common  # noqa: E402
from kmax_tf.data import dataset_descriptors  # noqa: E402
from kmax_tf.data import input_pipeline  # noqa: E402
from kmax_tf.data import tfrecord_decoder  # noqa: E402
from kmax_tf.evaluation import panoptic_quality_metric  # noqa: E402
from kmax_tf.export import portable  # noqa: E402
from kmax_tf.export import predictor as predictor_lib  # noqa: E402
from kmax_tf.export import serving  # noqa: E402

FORMATS = (('SavedModel', 'saved_model', 'none'), ('LiteRT float32', 'tflite', 'none'),
           ('LiteRT float16', 'tflite', 'float16'),
           ('LiteRT dynamic int8', 'tflite', 'dynamic_int8'), ('ONNX float32', 'onnx', 'none'))


def _eval_samples(config, data_dir):
  """(raw uint8 image, GT panoptic, GT crowd mask) of the eval split, in file order."""
  options = config.eval_dataset_options
  descriptor = dataset_descriptors.descriptor_from_options(options)
  cwd = os.getcwd()
  os.chdir(data_dir)  # Relative file patterns, as the trainer resolves them.
  try:
    files = input_pipeline.resolve_file_patterns(options.file_pattern)
    options.batch_size = 1
    samples = input_pipeline.build_dataset(options, descriptor, is_training=False, seed=0)
    decoder = tfrecord_decoder.TFRecordDecoder(descriptor)
    images = [decoder(record)['image'].numpy() for record in tf.data.TFRecordDataset(files)]
    labels = [(sample[common.GT_PANOPTIC_RAW][0].numpy(),
               sample[common.GT_IS_CROWD_RAW][0].numpy()) for sample in samples]
  finally:
    os.chdir(cwd)
  if len(images) != len(labels):
    raise SystemExit(f'{len(images)} images but {len(labels)} labels')
  return [(image, gt, crowd) for image, (gt, crowd) in zip(images, labels)], descriptor


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', required=True)
  parser.add_argument('--checkpoint', required=True)
  parser.add_argument('--data_dir', default='.')
  args = parser.parse_args()
  config = serving.load_experiment_config(args.config)
  samples, descriptor = _eval_samples(config, args.data_dir)
  print(f'{len(samples)} eval images; building the model ...', flush=True)
  module = serving.build_serving_module(config, args.checkpoint)
  results = {}
  with tempfile.TemporaryDirectory() as folder:
    for name, export_format, quantization in FORMATS:
      start = time.perf_counter()
      if export_format == 'saved_model':
        runner = predictor_lib.Predictor.from_saved_model(
            serving.save_module(module, os.path.join(folder, 'saved_model')))
      else:
        data = (portable.convert_tflite(module, quantization) if export_format == 'tflite'
                else portable.convert_onnx(module))
        path = portable.write_model_file(
            data, portable.file_metadata(module, export_format, quantization),
            os.path.join(folder, f'{export_format}_{quantization}'),
            portable.MODEL_FILES[export_format])
        runner = predictor_lib.Predictor.from_export(path)
      metric = panoptic_quality_metric.PanopticQualityMetric(
          num_classes=descriptor.num_classes, ignore_label=descriptor.ignore_label,
          label_divisor=descriptor.panoptic_label_divisor,
          thing_class_ids=descriptor.class_has_instances_list)
      maps = []
      for image, gt, crowd in samples:
        panoptic = runner(image).panoptic
        maps.append(panoptic)
        metric.update_state(gt[None], panoptic[None], crowd[None])
      results[name] = (metric.result()['All'], maps)
      print(f'  {name}: {time.perf_counter() - start:.0f} s', flush=True)

  reference_pq, reference_maps = results['SavedModel'][0]['pq'], results['SavedModel'][1]
  total = sum(m.size for m in reference_maps)
  print(f'\n{len(samples)} images of {os.path.basename(args.config)} eval split')
  print(f'{"format":22s} {"PQ":>7s} {"SQ":>7s} {"RQ":>7s} {"PQ change":>10s} '
        f'{"same pixels":>12s}')
  for name, (summary, maps) in results.items():
    same = sum(int((a == b).sum()) for a, b in zip(maps, reference_maps)) / total
    print(f'{name:22s} {100 * summary["pq"]:7.2f} {100 * summary["sq"]:7.2f} '
          f'{100 * summary["rq"]:7.2f} {100 * (summary["pq"] - reference_pq):+10.2f} '
          f'{100 * same:11.3f}%')


if __name__ == '__main__':
  main()
