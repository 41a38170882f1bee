"""One training step on 1 vs 2 replicas (two logical CPUs); prints JSON. Run as a subprocess."""

import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

_CPU = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(_CPU, [tf.config.LogicalDeviceConfiguration()] * 2)

import orbit  # noqa: E402

from kmax_tf.training import trainer as trainer_lib  # noqa: E402
from tests.training import standins  # noqa: E402


def one_step(strategy, synchronized_bn: bool, clip: bool):
  config = standins.make_config(steps=10, optimizer='sgd', base_learning_rate=0.5,
                                use_gradient_clipping=clip, clip_gradient_norm=0.05,
                                backbone_learning_rate_multiplier=0.1)
  with strategy.scope():
    tf.random.set_seed(1)
    model = standins.TinyModel(synchronized_bn=synchronized_bn)
    model(tf.zeros([1, standins.CROP, standins.CROP, 3]))
    for index, variable in enumerate(model.weights):
      values = np.random.default_rng(index).normal(size=variable.shape.as_list()) * 0.5
      if 'moving_variance' in variable.name:
        values = np.ones(variable.shape.as_list())
      variable.assign(values.astype(np.float32))
    step = orbit.utils.create_global_step()
    trainer = trainer_lib.Trainer(model, standins.ToyLoss(), standins.make_dataset(4),
                                  config.trainer_options.solver_options, step,
                                  backbone=model.encoder)
  before = {v.name: v.numpy() for v in model.trainable_variables}
  logs = trainer.train(tf.constant(1))
  # SGD's first update is -lr * gradient (lr 0.05 for the encoder, 0.5 for the head).
  encoder = {v.ref() for v in model.encoder.trainable_variables}
  grads = [((before[v.name] - v.numpy()) / (0.05 if v.ref() in encoder else 0.5)).tolist()
           for v in model.trainable_variables]
  moving = [v.numpy().tolist() for v in model.non_trainable_variables if 'moving' in v.name]
  return {'loss': float(logs['losses/train_total_loss']), 'grads': grads, 'moving': moving,
          'step': int(step.numpy())}


def main():
  one = tf.distribute.OneDeviceStrategy('/cpu:0')
  two = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
  results = {}
  for name, strategy in (('one', one), ('two', two)):
    for sync in (True, False):
      for clip in (False, True):
        results[f'{name}_sync{int(sync)}_clip{int(clip)}'] = one_step(strategy, sync, clip)
  results['num_replicas'] = two.num_replicas_in_sync
  print('RESULT ' + json.dumps(results))


if __name__ == '__main__':
  main()
