"""solver_options.recompute_activations: a training step of the kMaX model is unchanged."""

import pathlib

import numpy as np
import orbit
import tensorflow as tf

from kmax_tf import common
from kmax_tf.config import loader
from kmax_tf.keras_setup import keras
from kmax_tf.layers import recompute
from kmax_tf.model import builder as model_builder
from kmax_tf.training import trainer as trainer_lib

REPO = pathlib.Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / 'configs' / 'demo' / 'kmax_demo.textproto'
CROP = 33


def _output_loss(inputs, outputs):
  """A deterministic per-sample loss on every head (the kMaX loss samples pixels at random)."""
  del inputs
  terms = [tf.reduce_mean(tf.square(outputs[key]), axis=list(range(1, outputs[key].shape.rank)))
           for key in (common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY,
                       common.PRED_TRANSFORMER_CLASS_LOGITS_KEY,
                       common.PRED_SEMANTIC_LOGITS_KEY)]
  return {common.TOTAL_LOSS: tf.add_n(terms)}


def _variables_after_one_step(parts):
  config = loader.load_config(DEMO_CONFIG, overrides=[
      f'train_dataset_options.crop_size={CROP},{CROP}'])
  solver = config.trainer_options.solver_options
  solver.recompute_activations[:] = parts
  images = tf.random.stateless_uniform([2, CROP, CROP, 3], [1, 2], 0.0, 255.0)
  dataset = tf.data.Dataset.from_tensors({common.IMAGE: images}).repeat()
  keras.utils.set_random_seed(3)
  with tf.distribute.OneDeviceStrategy('/cpu:0').scope():
    model = model_builder.build_model(config)
    trainer = trainer_lib.Trainer(model, _output_loss, dataset, solver,
                                  orbit.utils.create_global_step(),
                                  backbone=model.checkpoint_items['encoder'])
  trainer.train(tf.constant(1))
  return [(variable.name, variable.numpy()) for variable in model.variables]


def test_recomputed_encoder_and_decoder_train_the_same_step(monkeypatch):
  recomputed_functions = []
  recompute_grad = tf.recompute_grad

  def counting_recompute_grad(fn):
    recomputed_functions.append(fn)
    return recompute_grad(fn)

  monkeypatch.setattr(recompute.tf, 'recompute_grad', counting_recompute_grad, raising=True)
  plain = _variables_after_one_step([])
  assert not recomputed_functions
  recomputed = _variables_after_one_step(['pixel_encoder', 'pixel_decoder'])
  # Every residual block of the encoder (1 + 1 + 2 + 1 at 1/3 of ResNet-50's layers) and of
  # the pixel decoder (4 stages of one block) went through tf.recompute_grad, in one trace.
  assert len(recomputed_functions) == 9
  assert len(plain) == len(recomputed)
  # BatchNorm statistics of the encoder and decoder among them: updated once each.
  assert len([name for name, _ in plain if 'moving_' in name]) > 50
  for (name, value), (_, value_r) in zip(plain, recomputed):
    np.testing.assert_allclose(value_r, value, rtol=1e-4, atol=1e-6, err_msg=name)
