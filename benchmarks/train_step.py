"""Training step time: COCO kMaX R50 (crop 641, batch 1) graph vs XLA; demo config steps/s.

Usage:
  python benchmarks/train_step.py [--steps=3] [--repeats=3] [--skip_coco] [--skip_demo]
      [--demo_config=configs/demo/kmax_demo.textproto --demo_data=DIR]

COCO samples come from the DeepLab2 reference TFRecords
(../shared/dl2_reference/data/tfrecord); the demo from `--demo_data` (see
`python -m kmax_tf.data.demo_dataset`). Each measurement runs `steps` training
steps in one orbit loop (graph mode, tf.while_loop) after a warm-up loop; the
table shows the median over `repeats` and the ratio to the graph baseline.
"""

import argparse
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import orbit  # noqa: E402
import tensorflow as tf  # noqa: E402

from kmax_tf.config import loader  # noqa: E402
from kmax_tf.data import dataset_descriptors, input_pipeline  # noqa: E402
from kmax_tf.losses import builder as loss_builder  # noqa: E402
from kmax_tf.model import builder as model_builder  # noqa: E402
from kmax_tf.training import trainer as trainer_lib  # noqa: E402

COCO_CONFIG = REPO / 'configs' / 'coco' / 'kmax_meta_r50_os32.textproto'
COCO_RECORDS = REPO.parent / 'shared' / 'dl2_reference' / 'data' / 'tfrecord'


def _coco_config(crop: int):
  overrides = [
      f'train_dataset_options.crop_size={crop},{crop}',
      f'train_dataset_options.min_resize_value={crop}',
      f'train_dataset_options.max_resize_value={crop}',
      'train_dataset_options.batch_size=1',
      f'eval_dataset_options.crop_size={crop},{crop}',
      'model_options.initial_checkpoint=',
  ]
  substitutions = {'EXPERIMENT_NAME': 'bench', 'INIT_CHECKPOINT': '',
                   'TRAIN_SET': str(COCO_RECORDS / 'train-*.tfrecord'),
                   'VAL_SET': str(COCO_RECORDS / 'val-*.tfrecord')}
  return loader.load_config(COCO_CONFIG, substitutions, overrides)


def _measure(config, jit_compile: bool, steps: int, repeats: int):
  """Median seconds per step, or the error text if the variant cannot run."""
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
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--crop', type=int, default=641)
  parser.add_argument('--skip_coco', action='store_true')
  parser.add_argument('--skip_xla', action='store_true')
  parser.add_argument('--skip_demo', action='store_true')
  parser.add_argument('--demo_config', default=str(REPO / 'configs/demo/kmax_demo.textproto'))
  parser.add_argument('--demo_data', default='')
  parser.add_argument('--demo_override', action='append', default=[])
  args = parser.parse_args()

  rows = []
  if not args.skip_coco:
    config = _coco_config(args.crop)
    graph = _measure(config, False, args.steps, args.repeats)
    rows.append((f'COCO R50 crop {args.crop} batch 1, graph', graph, graph))
    if not args.skip_xla:
      rows.append((f'COCO R50 crop {args.crop} batch 1, XLA',
                   _measure(config, True, args.steps, args.repeats), graph))
  if not args.skip_demo:
    substitutions = {'DEMO_DATA': args.demo_data} if args.demo_data else None
    config = loader.load_config(args.demo_config, substitutions, args.demo_override)
    demo = _measure(config, False, args.steps, args.repeats)
    rows.append((f'demo ({pathlib.Path(args.demo_config).name}), graph', demo, demo))

  print(f'{"case":<44} {"s/step":>9} {"steps/s":>9} {"vs graph":>9}')
  for name, value, baseline in rows:
    if isinstance(value, str):
      print(f'{name:<44} {"failed":>9}   {value}')
      continue
    ratio = baseline / value if isinstance(baseline, float) else float('nan')
    print(f'{name:<44} {value:9.3f} {1 / value:9.3f} {ratio:8.2f}x')
  print(f'(median of {args.repeats} runs of {args.steps} steps; 2-core CPU shared with other '
        'jobs: compare ratios, not absolute times)')


if __name__ == '__main__':
  main()
