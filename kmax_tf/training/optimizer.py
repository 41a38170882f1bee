"""Optimizers as DeepLab2's trainer builds them (Keras 2 legacy optimizers).

DeepLab2 trained with Keras' OptimizerV2 classes (now `keras.optimizers.legacy`),
so its released checkpoints hold their object graph under `optimizer` and
`backbone_optimizer`; kmax_tf uses the same classes to keep those keys.

AdamW follows DeepLab2: Adam plus decoupled weight decay
`var <- var - lr_t * weight_decay * var`, where lr_t is the scheduled learning
rate of the step (without Adam's bias correction), applied only to variables
whose name ends in `kernel:0` or `weight:0` (convolution / dense kernels, incl.
`depthwise_kernel`, `qkv_kernel`); biases, BatchNorm / LayerNorm gamma and beta,
positional embeddings, layer scales and cluster centers are not decayed.
"""

import re
from typing import Iterable, List, Sequence, Tuple

import tensorflow as tf

from kmax_tf.keras_setup import keras
from kmax_tf.training import learning_rate

ADAM = 'adam'
ADAMW = 'adamw'
SGD = 'sgd'
SGD_MOMENTUM = 0.9

# Variable names (as `tf.Variable.name`) that get decoupled weight decay.
_DECAYED_NAME = re.compile(r'(kernel|weight):0$')
# MirroredStrategy names the copies of a variable on replicas 1.. `<name>/replica_<i>:0`.
_REPLICA_SUFFIX = re.compile(r'/replica_\d+(:\d+)$')


def uses_weight_decay(variable_name: str) -> bool:
  """True if AdamW decays the variable named `variable_name` (e.g. 'conv/kernel:0')."""
  return _DECAYED_NAME.search(_REPLICA_SUFFIX.sub(r'\1', variable_name)) is not None


class AdamWeightDecay(keras.optimizers.legacy.Adam):
  """Adam with decoupled weight decay on kernels (see the module docstring)."""

  def __init__(self, learning_rate=0.001, weight_decay_rate: float = 0.0, beta_1=0.9,
               beta_2=0.999, epsilon=1e-7, name='AdamWeightDecay', **kwargs):
    super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                     epsilon=epsilon, name=name, **kwargs)
    self.weight_decay_rate = weight_decay_rate

  def _decay(self, var, apply_state):
    if not self.weight_decay_rate or not uses_weight_decay(var.name):
      return tf.no_op()
    var_dtype = var.dtype.base_dtype
    coefficients = ((apply_state or {}).get((var.device, var_dtype))
                    or self._fallback_apply_state(var.device, var_dtype))
    rate = tf.cast(self.weight_decay_rate, var_dtype)
    return var.assign_sub(coefficients['lr_t'] * rate * var, use_locking=self._use_locking)

  def _resource_apply_dense(self, grad, var, apply_state=None):
    with tf.control_dependencies([self._decay(var, apply_state)]):
      return super()._resource_apply_dense(grad, var, apply_state=apply_state)

  def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
    with tf.control_dependencies([self._decay(var, apply_state)]):
      return super()._resource_apply_sparse(grad, var, indices, apply_state=apply_state)

  def get_config(self):
    config = super().get_config()
    config['weight_decay_rate'] = self.weight_decay_rate
    return config


# `solver_options.optimizer` -> builder(learning-rate schedule, solver_options);
# config validation reads this list.
OPTIMIZER_BUILDERS = {
    ADAM: lambda schedule, _: keras.optimizers.legacy.Adam(learning_rate=schedule),
    ADAMW: lambda schedule, solver: AdamWeightDecay(
        learning_rate=schedule, weight_decay_rate=solver.adamw_weight_decay),
    SGD: lambda schedule, _: keras.optimizers.legacy.SGD(learning_rate=schedule,
                                                          momentum=SGD_MOMENTUM),
}
SUPPORTED_OPTIMIZERS = tuple(OPTIMIZER_BUILDERS)


def build_optimizer(solver_options, learning_rate_multiplier: float = 1.0):
  """Builds the optimizer DeepLab2 builds from `SolverOptions`.

  Args:
    solver_options: a `trainer_pb2.SolverOptions`.
    learning_rate_multiplier: scales base_learning_rate (backbone optimizer).

  Returns:
    A `keras.optimizers.legacy.Optimizer` whose learning rate is the schedule
    of `learning_rate.build_learning_rate_schedule`.

  Raises:
    ValueError: for an unknown optimizer name.
  """
  schedule = learning_rate.build_learning_rate_schedule(solver_options, learning_rate_multiplier)
  name = solver_options.optimizer
  if name not in OPTIMIZER_BUILDERS:
    raise ValueError(f'trainer_options.solver_options.optimizer={name!r} is not supported; use '
                     f'one of {SUPPORTED_OPTIMIZERS}.')
  return OPTIMIZER_BUILDERS[name](schedule, solver_options)


def uses_backbone_optimizer(solver_options) -> bool:
  """DeepLab2 builds a second optimizer iff backbone_learning_rate_multiplier is set."""
  return solver_options.HasField('backbone_learning_rate_multiplier')


GradientAndVariable = Tuple[tf.Tensor, tf.Variable]


def split_backbone(grads_and_vars: Iterable[GradientAndVariable],
                   backbone_variables: Sequence[tf.Variable]
                   ) -> Tuple[List[GradientAndVariable], List[GradientAndVariable]]:
  """Splits (gradient, variable) pairs into (others, backbone).

  Args:
    grads_and_vars: pairs for all trainable variables.
    backbone_variables: the encoder's trainable variables (DeepLab2's
      `model.checkpoint_items['encoder'].trainable_variables`).

  Returns:
    (head_pairs, backbone_pairs), each keeping the input order.
  """
  backbone_refs = {v.ref() for v in backbone_variables}
  head, backbone = [], []
  for grad, var in grads_and_vars:
    (backbone if var.ref() in backbone_refs else head).append((grad, var))
  return head, backbone


def create_slots(optimizer, variables: Sequence[tf.Variable]) -> None:
  """Creates the optimizer's step counter, hyperparameters and slots for `variables` now.

  Keras creates them in the first `apply_gradients`. Inside a tf.function that
  makes TensorFlow trace the whole training step twice (a function may create
  variables in its first trace only), which doubles the start-up time.
  Call under the strategy's scope.
  """
  with tf.name_scope(optimizer._name), tf.init_scope():  # As apply_gradients does.
    optimizer._create_all_weights(list(variables))  # noqa: SLF001


MIXED_FLOAT16 = 'mixed_float16'
MIXED_BFLOAT16 = 'mixed_bfloat16'
SUPPORTED_PRECISION_POLICIES = ('', 'float32', MIXED_FLOAT16, MIXED_BFLOAT16)


def check_precision_policy(policy: str) -> str:
  """Validates solver_options.mixed_precision_policy; returns '' for float32."""
  if policy not in SUPPORTED_PRECISION_POLICIES:
    raise ValueError(f'trainer_options.solver_options.mixed_precision_policy={policy!r} is not '
                     f'supported; use one of {SUPPORTED_PRECISION_POLICIES}.')
  return '' if policy == 'float32' else policy


def needs_loss_scaling(policy: str) -> bool:
  return policy == MIXED_FLOAT16
