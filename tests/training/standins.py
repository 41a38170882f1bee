"""Tiny stand-ins for the model, loss and input pipeline used by the training tests."""

import tensorflow as tf

from kmax_tf import common
from kmax_tf.keras_setup import keras
from kmax_tf.protos import config_pb2

NUM_CLASSES = 3
CROP = 8


class TinyModel(keras.Model):
  """conv+syncBN 'encoder' and a 1x1 conv head; outputs {'semantic_logits': [B,H,W,C]}."""

  def __init__(self, synchronized_bn: bool = True, dtype=None):
    super().__init__(dtype=dtype)
    self.encoder = keras.Sequential([
        keras.layers.Conv2D(4, 3, padding='same', use_bias=False),
        keras.layers.BatchNormalization(synchronized=synchronized_bn, momentum=0.5),
        keras.layers.ReLU(),
    ], name='encoder')
    self.head = keras.layers.Conv2D(NUM_CLASSES, 1, name='head')

  def call(self, images, training=False):
    features = self.encoder(images / 255.0, training=training)
    return {common.PRED_SEMANTIC_LOGITS_KEY: self.head(features)}

  @property
  def checkpoint_items(self):
    return {'encoder': self.encoder, 'head': self.head}


class ToyLoss:
  """Per-sample softmax cross-entropy on semantic_gt, plus a second 'aux' term."""

  loss_names = (common.TOTAL_LOSS, common.SEMANTIC_LOSS, 'aux_loss')

  def __call__(self, y_true, y_pred):
    logits = tf.cast(y_pred[common.PRED_SEMANTIC_LOGITS_KEY], tf.float32)
    labels = tf.cast(y_true[common.GT_SEMANTIC_KEY], tf.int32)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    semantic = tf.reduce_mean(ce, axis=[1, 2])
    aux = 0.01 * tf.reduce_mean(tf.square(logits), axis=[1, 2, 3])
    return {common.TOTAL_LOSS: semantic + aux, common.SEMANTIC_LOSS: semantic, 'aux_loss': aux}


def make_sample(index):
  seed = tf.stack([tf.cast(index, tf.int32), 7])
  image = tf.random.stateless_uniform([CROP, CROP, 3], seed, 0.0, 255.0)
  labels = tf.cast(tf.reduce_mean(image, axis=-1) // (255.0 / NUM_CLASSES + 1e-3), tf.int32)
  return {common.IMAGE: image, common.GT_SEMANTIC_KEY: labels,
          'sample_index': tf.cast(index, tf.int64)}


def make_dataset(batch_size: int, num_samples: int = 64) -> tf.data.Dataset:
  return tf.data.Dataset.range(num_samples).map(make_sample).repeat().batch(
      batch_size, drop_remainder=True)


def make_config(steps: int = 20, **solver) -> config_pb2.ExperimentOptions:
  config = config_pb2.ExperimentOptions()
  config.experiment_name = 'tiny'
  trainer = config.trainer_options
  trainer.save_checkpoints_steps = 2
  trainer.save_summaries_steps = 2
  trainer.steps_per_loop = 2
  trainer.num_checkpoints_to_keep = 3
  options = trainer.solver_options
  options.optimizer = 'adamw'
  options.adamw_weight_decay = 0.05
  options.base_learning_rate = 0.01
  options.training_number_of_steps = steps
  for key, value in solver.items():
    setattr(options, key, value)
  config.train_dataset_options.batch_size = 4
  return config


def run_experiment(model_dir, steps, mode='train', initial_checkpoint='', weights_seed=0,
                   **run_kwargs):
  """`train_lib.run_experiment` on the stand-ins; returns (model, results).

  The evaluator reports `head_bias_sum`, which tells which weights it evaluated.
  """
  import orbit

  from kmax_tf.training import train_lib
  config = make_config(steps=steps)
  config.model_options.initial_checkpoint = initial_checkpoint
  config.evaluator_options.eval_steps = 1
  holder = {}

  def model_fn(_):
    keras.utils.set_random_seed(weights_seed)
    holder['model'] = TinyModel(synchronized_bn=False)
    holder['model'](tf.zeros([1, CROP, CROP, 3]))
    return holder['model']

  class BiasEvaluator(orbit.AbstractEvaluator):
    def evaluate(self, num_steps):
      return {'head_bias_sum': float(tf.reduce_sum(holder['model'].head.bias))}

  results = train_lib.run_experiment(
      mode, config, str(model_dir), strategy=tf.distribute.OneDeviceStrategy('/cpu:0'),
      model_fn=model_fn, loss_fn=lambda _config, _model: ToyLoss(),
      dataset_fn=lambda options, is_training: make_dataset(options.batch_size),
      evaluator_fn=lambda *args: BiasEvaluator(), **run_kwargs)
  return holder['model'], results
