"""Runs run_experiment on the tiny stand-ins; executed as a subprocess by the tests.

Usage: python -m tests.training.standin_run MODEL_DIR STEPS [--strategy=...]
  [--sleep_per_loop=S] [--mixed=POLICY] [--nan_at_step=N] [--non_finite_action=...]
  [--num_cpu_devices=K] [--checkpoint_input_iterator=false|true|if_possible]
At the end writes MODEL_DIR/final_weights.npz (all model weights) on the chief.
"""

import argparse
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('model_dir')
  parser.add_argument('steps', type=int)
  parser.add_argument('--strategy', default='one_device')
  parser.add_argument('--sleep_per_loop', type=float, default=0.0)
  parser.add_argument('--mixed', default='')
  parser.add_argument('--nan_at_step', type=int, default=-1)
  parser.add_argument('--non_finite_action', default='stop')
  parser.add_argument('--num_cpu_devices', type=int, default=0)
  parser.add_argument('--checkpoint_input_iterator', default='false')
  args = parser.parse_args()
  if args.num_cpu_devices > 1:
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * args.num_cpu_devices)

  from kmax_tf import common
  from kmax_tf.training import distribution
  from kmax_tf.training import train_lib
  from tests.training import standins

  config = standins.make_config(steps=args.steps, backbone_learning_rate_multiplier=0.1)
  config.trainer_options.solver_options.mixed_precision_policy = args.mixed
  config.trainer_options.solver_options.non_finite_loss_action = args.non_finite_action
  strategy = distribution.create_strategy(args.strategy)

  loss = standins.ToyLoss()
  if args.nan_at_step >= 0:
    inner = loss

    class NanLoss:
      loss_names = inner.loss_names

      def __call__(self, y_true, y_pred):
        losses = inner(y_true, y_pred)
        # Poison the batch whose first sample index is nan_at_step * batch.
        poison = tf.equal(y_true['sample_index'][0] % 64,
                          args.nan_at_step * config.train_dataset_options.batch_size % 64)
        bad = tf.where(poison, float('nan'), 0.0)
        losses['aux_loss'] = losses['aux_loss'] + bad
        losses[common.TOTAL_LOSS] = losses[common.TOTAL_LOSS] + bad
        return losses
    loss = NanLoss()

  model_holder = {}

  def model_fn(_):
    from kmax_tf.keras_setup import keras
    keras.utils.set_random_seed(0)  # The same initial weights in every process.
    model_holder['model'] = standins.TinyModel()
    return model_holder['model']

  def dataset_fn(options, is_training):
    return standins.make_dataset(options.batch_size)

  if args.sleep_per_loop:
    from kmax_tf import progress
    original = progress.ProgressPrinter.__call__

    def slow(self, output):
      original(self, output)
      time.sleep(args.sleep_per_loop)
    progress.ProgressPrinter.__call__ = slow

  train_lib.run_experiment('train', config, args.model_dir, strategy=strategy,
                           model_fn=model_fn, loss_fn=lambda _config, _model: loss,
                           dataset_fn=dataset_fn,
                           checkpoint_input_iterator=args.checkpoint_input_iterator)
  # Every worker reads (ON_READ BatchNorm statistics are all-reduced); the chief saves.
  weights = {v.name: v.numpy() for v in model_holder['model'].weights}
  if distribution.is_chief(strategy):
    np.savez(os.path.join(args.model_dir, 'final_weights.npz'), **weights)


if __name__ == '__main__':
  main()
