"""AdamW as DeepLab2 (decoupled decay on kernels only) against numpy; the backbone split."""

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf.keras_setup import keras
from kmax_tf.protos import trainer_pb2
from kmax_tf.training import optimizer as optimizer_lib


@pytest.mark.parametrize('name, decayed', [
    ('conv/kernel:0', True), ('dense/kernel:0', True), ('block/depthwise_kernel:0', True),
    ('attention/qkv_kernel:0', True), ('some/weight:0', True),
    ('conv/kernel/replica_1:0', True),
    ('conv/bias:0', False), ('bn/gamma:0', False), ('bn/beta:0', False),
    ('ln/gamma:0', False), ('pos/embeddings:0', False), ('block/layer_scale:0', False),
    ('kmax/cluster_centers:0', False), ('bn/moving_mean:0', False), ('kernel_size:0', False),
])
def test_which_variables_get_weight_decay(name, decayed):
  assert optimizer_lib.uses_weight_decay(name) is decayed


def _numpy_adamw(values, grads_per_step, lrs, decay, beta1=0.9, beta2=0.999, eps=1e-7):
  m = np.zeros_like(values)
  v = np.zeros_like(values)
  for t, (grad, lr) in enumerate(zip(grads_per_step, lrs), start=1):
    values = values - lr * decay * values  # decoupled decay with the scheduled rate
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad ** 2
    corrected = lr * np.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
    values = values - corrected * m / (np.sqrt(v) + eps)
  return values


def test_adamw_two_steps_match_numpy():
  options = trainer_pb2.SolverOptions(
      optimizer='adamw', adamw_weight_decay=0.05, base_learning_rate=0.1,
      training_number_of_steps=4, poly_learning_power=1.0)
  optimizer = optimizer_lib.build_optimizer(options)
  rng = np.random.default_rng(0)
  kernel0 = rng.normal(size=(3, 2)).astype(np.float32)
  bias0 = rng.normal(size=(2,)).astype(np.float32)
  kernel = tf.Variable(kernel0, name='kernel')
  bias = tf.Variable(bias0, name='bias')
  grads = [(rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=(2,)).astype(np.float32))
           for _ in range(2)]
  for kernel_grad, bias_grad in grads:
    optimizer.apply_gradients([(tf.constant(kernel_grad), kernel), (tf.constant(bias_grad), bias)])
  lrs = [0.1, 0.075]  # poly power 1 over 4 steps at steps 0 and 1
  expected_kernel = _numpy_adamw(kernel0, [g[0] for g in grads], lrs, decay=0.05)
  expected_bias = _numpy_adamw(bias0, [g[1] for g in grads], lrs, decay=0.0)
  np.testing.assert_allclose(kernel.numpy(), expected_kernel, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bias.numpy(), expected_bias, rtol=1e-5, atol=1e-6)
  # Decay really acted on the kernel: plain Adam would differ.
  plain = _numpy_adamw(kernel0, [g[0] for g in grads], lrs, decay=0.0)
  assert np.abs(plain - expected_kernel).max() > 1e-3


def test_adamw_does_not_decay_norm_and_embedding_variables():
  options = trainer_pb2.SolverOptions(optimizer='adamw', adamw_weight_decay=0.5,
                                      base_learning_rate=0.1, training_number_of_steps=10)
  optimizer = optimizer_lib.build_optimizer(options)
  norm = keras.layers.LayerNormalization()
  norm.build([None, 4])
  batch_norm = keras.layers.BatchNormalization()
  batch_norm.build([None, 4])
  embedding = keras.layers.Embedding(5, 4)
  embedding.build([None])
  conv = keras.layers.Conv2D(2, 1)
  conv.build([None, 2, 2, 3])
  variables = (norm.trainable_variables + batch_norm.trainable_variables
               + embedding.trainable_variables + conv.trainable_variables)
  for variable in variables:
    variable.assign(tf.ones_like(variable))
  optimizer.apply_gradients([(tf.zeros_like(v), v) for v in variables])
  for variable in variables:
    # Zero gradient: Adam moves nothing, so only decay can change a value.
    expected = 1.0 - 0.1 * 0.5 if variable.name.endswith('kernel:0') else 1.0
    np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-6, err_msg=variable.name)


def test_optimizer_kinds_and_backbone_optimizer_flag():
  options = trainer_pb2.SolverOptions(optimizer='sgd', training_number_of_steps=10)
  sgd = optimizer_lib.build_optimizer(options)
  assert isinstance(sgd, keras.optimizers.legacy.SGD) and sgd.get_config()['momentum'] == 0.9
  assert isinstance(optimizer_lib.build_optimizer(
      trainer_pb2.SolverOptions(optimizer='adam', training_number_of_steps=10)),
      keras.optimizers.legacy.Adam)
  assert not optimizer_lib.uses_backbone_optimizer(options)
  options.backbone_learning_rate_multiplier = 0.1
  assert optimizer_lib.uses_backbone_optimizer(options)
  backbone = optimizer_lib.build_optimizer(options, options.backbone_learning_rate_multiplier)
  assert float(backbone.learning_rate(0)) == pytest.approx(0.1 * options.base_learning_rate)
  with pytest.raises(ValueError, match='optimizer'):
    optimizer_lib.build_optimizer(trainer_pb2.SolverOptions(optimizer='lamb'))


def test_split_backbone_keeps_order():
  a, b, c = (tf.Variable(float(i), name=f'v{i}') for i in range(3))
  head, backbone = optimizer_lib.split_backbone([(1, a), (2, b), (3, c)], [c, a])
  assert [g for g, _ in head] == [2] and [g for g, _ in backbone] == [1, 3]
