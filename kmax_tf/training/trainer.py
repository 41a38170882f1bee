"""Orbit trainer: one DeepLab2-style training step per `train_step` call.

Per step and replica: forward pass with `training=True`, the per-sample loss
dict averaged over the replica batch, the total loss divided by the number of
replicas (gradients are summed across replicas), optional global-norm
clipping, then the head variables are updated by `optimizer` and the encoder
variables by `backbone_optimizer` (DeepLab2's backbone learning-rate
multiplier). The global step advances by one.

Non-finite losses: the first step whose averaged loss terms (or, without loss
scaling, gradients) are NaN/Inf is recorded in graph; `train_loop_end` then
raises `NonFiniteLossError` naming the step and the terms, before orbit's
Controller can write a checkpoint, so no poisoned checkpoint is ever saved.
"""

from typing import Callable, Dict, Mapping, Optional, Sequence

import orbit
import tensorflow as tf

from kmax_tf import common
from kmax_tf.keras_setup import keras
from kmax_tf.layers import activations
from kmax_tf.layers import recompute
from kmax_tf.training import optimizer as optimizer_lib

# Loss names tracked when the loss function does not announce its own.
DEFAULT_LOSS_NAMES = (
    common.TOTAL_LOSS, common.PQ_STYLE_LOSS, common.PQ_STYLE_LOSS_CLASS_TERM,
    common.PQ_STYLE_LOSS_MASK_DICE_TERM, common.MASK_ID_CROSS_ENTROPY_LOSS,
    common.INSTANCE_DISCRIMINATION_LOSS, common.SEMANTIC_LOSS)
GRADIENTS_TERM = 'gradients'
_SINGLE_WORKER_STRATEGIES = (tf.distribute.OneDeviceStrategy, tf.distribute.MirroredStrategy,
                             type(tf.distribute.get_strategy()))


class NonFiniteLossError(RuntimeError):
  """A training step produced NaN/Inf; carries the step and the offending terms."""

  def __init__(self, step: int, terms: Sequence[str]):
    self.step = step
    self.terms = tuple(terms)
    super().__init__(
        f'Non-finite training loss at step {step} (0-based index of the update): '
        f'{", ".join(self.terms)} not finite. The model state after this step was discarded '
        'and no checkpoint was written from it. Lower the learning rate, enable '
        'solver_options.use_gradient_clipping, or set '
        "solver_options.non_finite_loss_action='restore'.")


def loss_names_of(loss_fn) -> Sequence[str]:
  """Loss names announced by `loss_fn` (`loss_names` or `get_loss_names()`), else defaults."""
  names = getattr(loss_fn, 'loss_names', None)
  if names is None and hasattr(loss_fn, 'get_loss_names'):
    names = loss_fn.get_loss_names()
  names = list(names or DEFAULT_LOSS_NAMES)
  if common.TOTAL_LOSS not in names:
    names.insert(0, common.TOTAL_LOSS)
  return names


def _to_float32(tensor):
  if isinstance(tensor, tf.Tensor) and tensor.dtype in (tf.float16, tf.bfloat16):
    return tf.cast(tensor, tf.float32)
  return tensor


class Trainer(orbit.StandardTrainer):
  """Implements DeepLab2's training step on top of `orbit.StandardTrainer`.

  Must be constructed inside `strategy.scope()`.
  """

  def __init__(self,
               model: keras.Model,
               loss_fn: Callable[[Mapping[str, tf.Tensor], Mapping[str, tf.Tensor]],
                                 Dict[str, tf.Tensor]],
               train_dataset,
               solver_options,
               global_step: tf.Variable,
               backbone: Optional[keras.layers.Layer] = None,
               loss_names: Optional[Sequence[str]] = None,
               use_tf_while_loop: bool = True,
               checkpointable_input: bool = True,
               jit_compile: bool = False):
    """Initializes the trainer.

    Args:
      model: maps `images` float32 [B, H, W, 3] to a dict of outputs.
      loss_fn: (inputs dict, outputs dict) -> dict of per-sample float32 [B]
        losses including `common.TOTAL_LOSS`.
      train_dataset: a `tf.data.Dataset` of global batches (dicts with
        `common.IMAGE`), or a function `input_context -> Dataset` giving
        per-replica batches; distributed with orbit's make_distributed_dataset.
      solver_options: `trainer_pb2.SolverOptions`.
      global_step: int64 step variable (orbit.utils.create_global_step()).
      backbone: the encoder layer whose variables use `backbone_optimizer`
        when solver_options.backbone_learning_rate_multiplier is set.
      loss_names: names of the loss terms to report; see `loss_names_of`.
      use_tf_while_loop: run the `steps_per_loop` steps in one graph loop.
      checkpointable_input: with a single-worker strategy and a Dataset, read
        global batches through a plain (checkpointable) iterator and split
        them across replicas; see `train_iterator`.
      jit_compile: compile the per-replica step (forward, loss, backward,
        update) with XLA.
    """
    self._strategy = tf.distribute.get_strategy()
    # A plain iterator over the global batches is checkpointable (exact resume);
    # tf.distribute's iterators are not. Single-worker strategies split each
    # global batch across replicas; others use orbit's distributed dataset.
    self._split_global_batch = (
        checkpointable_input and isinstance(train_dataset, tf.data.Dataset)
        and isinstance(self._strategy, _SINGLE_WORKER_STRATEGIES))
    if self._split_global_batch:
      super().__init__(train_dataset, orbit.StandardTrainerOptions(
          use_tf_while_loop=use_tf_while_loop))
      self._train_iter = iter(train_dataset)
    else:
      distributed = orbit.utils.make_distributed_dataset(self._strategy, train_dataset)
      super().__init__(distributed, orbit.StandardTrainerOptions(
          use_tf_while_loop=use_tf_while_loop))
      self._train_iter = tf.nest.map_structure(iter, self.train_dataset)

    self._replica_step_fn = (
        tf.function(self._replica_step, jit_compile=True, autograph=False) if jit_compile
        else self._replica_step)
    self._model = model
    self._loss_fn = loss_fn
    self._global_step = global_step
    self._solver_options = solver_options
    self._precision_policy = optimizer_lib.check_precision_policy(
        solver_options.mixed_precision_policy)
    self._recompute_parts = tuple(solver_options.recompute_activations)
    recompute.check_parts(self._recompute_parts, 'solver_options.recompute_activations')

    self._optimizer = optimizer_lib.build_optimizer(solver_options)
    self._backbone_optimizer = None
    self._backbone = None
    if optimizer_lib.uses_backbone_optimizer(solver_options):
      if backbone is None:
        raise ValueError('solver_options.backbone_learning_rate_multiplier is set but the model '
                         'exposes no encoder (checkpoint_items["encoder"]).')
      self._backbone = backbone
      self._backbone_optimizer = optimizer_lib.build_optimizer(
          solver_options, solver_options.backbone_learning_rate_multiplier)
    # With float16 compute the loss is scaled; both optimizers get their own
    # LossScaleOptimizer, kept in lockstep (they always see the same finiteness).
    self._scaled_optimizer = self._scaled_backbone_optimizer = None
    if optimizer_lib.needs_loss_scaling(self._precision_policy):
      self._scaled_optimizer = keras.mixed_precision.LossScaleOptimizer(self._optimizer)
      if self._backbone_optimizer is not None:
        self._scaled_backbone_optimizer = keras.mixed_precision.LossScaleOptimizer(
            self._backbone_optimizer)
    self._create_optimizer_slots()
    self._clip_norm = (solver_options.clip_gradient_norm
                       if solver_options.use_gradient_clipping else 0.0)

    self._loss_names = list(loss_names or loss_names_of(loss_fn))
    self._loss_metrics = {
        name: keras.metrics.Mean('train_' + name, dtype=tf.float32) for name in self._loss_names}
    self._reported_names = set()
    self._check_names = self._loss_names + [GRADIENTS_TERM]
    self._first_non_finite_step = tf.Variable(
        -1, dtype=tf.int64, trainable=False, name='first_non_finite_step',
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    self._non_finite_terms = tf.Variable(
        tf.zeros([len(self._check_names)], tf.float32), trainable=False,
        name='non_finite_terms', aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

  def _create_optimizer_slots(self):
    if not self._model.built:  # Then Keras creates them in the first step (one more trace).
      return
    variables = self._model.trainable_variables
    if self._backbone_optimizer is None:
      optimizer_lib.create_slots(self._optimizer, variables)
      return
    head, backbone = optimizer_lib.split_backbone(
        [(None, v) for v in variables], self._backbone.trainable_variables)
    optimizer_lib.create_slots(self._optimizer, [v for _, v in head])
    optimizer_lib.create_slots(self._backbone_optimizer, [v for _, v in backbone])

  # ---- orbit hooks ----

  def train_loop_begin(self):
    for metric in self._loss_metrics.values():
      metric.reset_states()

  # The step has no Python control flow on tensors, so AutoGraph need not rewrite the
  # model's source: without it the step traces in 15 s instead of 25 (COCO R50).
  @tf.autograph.experimental.do_not_convert
  def train_step(self, iterator):
    def step_fn(inputs):
      self._replica_step_fn(inputs)
      self._global_step.assign_add(1)
    inputs = next(iterator)
    if self._split_global_batch and self._strategy.num_replicas_in_sync > 1:
      inputs = self._split_across_replicas(inputs)
    self._strategy.run(step_fn, args=(inputs,))

  def _split_across_replicas(self, inputs):
    """Global batch [B, ...] -> per-replica [B / num_replicas, ...] slices."""
    num_replicas = self._strategy.num_replicas_in_sync

    def replica_slice(context):
      def take(tensor):
        per_replica = tf.shape(tensor)[0] // num_replicas
        tf.debugging.assert_equal(
            tf.shape(tensor)[0] % num_replicas, 0,
            message=f'The global batch size must be divisible by {num_replicas} replicas.')
        return tensor[context.replica_id_in_sync_group * per_replica:
                      (context.replica_id_in_sync_group + 1) * per_replica]
      return tf.nest.map_structure(take, inputs)

    return self._strategy.experimental_distribute_values_from_function(replica_slice)

  def train_loop_end(self) -> Dict[str, tf.Tensor]:
    self.raise_if_non_finite()
    logs = {}
    for name in self._loss_names:
      if name in self._reported_names:
        logs['losses/train_' + name] = self._loss_metrics[name].result()
    logs['learning_rate'] = self.learning_rate(self._optimizer)
    if self._backbone_optimizer is not None:
      logs['backbone_learning_rate'] = self.learning_rate(self._backbone_optimizer)
    if self._scaled_optimizer is not None:
      logs['loss_scale'] = tf.convert_to_tensor(self._scaled_optimizer.loss_scale)
    return logs

  # ---- the step ----

  def _replica_step(self, inputs: Mapping[str, tf.Tensor]):
    replica = tf.distribute.get_replica_context()
    num_replicas = self._strategy.num_replicas_in_sync
    with tf.GradientTape() as tape, activations.lean_gradients(), recompute.enabled(
        self._recompute_parts):
      outputs = self._model(inputs[common.IMAGE], training=True)
      outputs = tf.nest.map_structure(_to_float32, outputs)
      loss_dict = self._loss_fn(inputs, outputs)
      if common.TOTAL_LOSS not in loss_dict:
        raise ValueError(f'The loss function returned {sorted(loss_dict)}, without '
                         f'{common.TOTAL_LOSS!r}.')
      mean_losses = {name: tf.reduce_mean(value) for name, value in loss_dict.items()}
      loss = mean_losses[common.TOTAL_LOSS] / num_replicas
      if self._scaled_optimizer is not None:
        loss = self._scaled_optimizer.get_scaled_loss(loss)

    variables = self._model.trainable_variables
    gradients = tape.gradient(loss, variables)
    if self._scaled_optimizer is not None:
      gradients = self._scaled_optimizer.get_unscaled_gradients(gradients)
    pairs = [(g, v) for g, v in zip(gradients, variables) if g is not None]

    self._record_non_finite(replica, mean_losses, [g for g, _ in pairs])

    aggregate = True
    if self._clip_norm > 0.0:
      # Clip the gradient of the global batch (summed over replicas), so the
      # result does not depend on the number of replicas.
      summed = replica.all_reduce(tf.distribute.ReduceOp.SUM, [g for g, _ in pairs])
      clipped, _ = tf.clip_by_global_norm(summed, self._clip_norm)
      pairs = list(zip(clipped, [v for _, v in pairs]))
      aggregate = False
    if self._scaled_backbone_optimizer is not None:
      # Make both loss-scale optimizers skip together: poison every gradient
      # when any is non-finite.
      all_finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g, _ in pairs])
      poison = tf.where(all_finite, 0.0, float('nan'))
      pairs = [(g + tf.cast(poison, g.dtype), v) for g, v in pairs]
    self._apply(pairs, aggregate)

    for name, value in mean_losses.items():
      if name in self._loss_metrics:
        self._loss_metrics[name].update_state(value)
        self._reported_names.add(name)

  def _apply(self, pairs, aggregate: bool):
    main = self._scaled_optimizer or self._optimizer
    if self._backbone_optimizer is None:
      main.apply_gradients(pairs, experimental_aggregate_gradients=aggregate)
      return
    head_pairs, backbone_pairs = optimizer_lib.split_backbone(
        pairs, self._backbone.trainable_variables)
    backbone = self._scaled_backbone_optimizer or self._backbone_optimizer
    main.apply_gradients(head_pairs, experimental_aggregate_gradients=aggregate)
    backbone.apply_gradients(backbone_pairs, experimental_aggregate_gradients=aggregate)

  def _record_non_finite(self, replica, mean_losses, gradients):
    values = []
    for name in self._check_names:
      if name == GRADIENTS_TERM:
        if self._scaled_optimizer is not None or not gradients:
          values.append(tf.constant(0.0))  # Loss scaling handles non-finite gradients.
        else:
          values.append(tf.linalg.global_norm(gradients))
      elif name in mean_losses:
        values.append(mean_losses[name])
      else:
        values.append(tf.constant(0.0))
    values = tf.stack(values)
    # A term counts as bad if it is non-finite on any replica.
    bad = replica.all_reduce(tf.distribute.ReduceOp.SUM,
                             tf.cast(tf.logical_not(tf.math.is_finite(values)), tf.float32))
    is_first = tf.logical_and(tf.reduce_any(bad > 0), self._first_non_finite_step < 0)
    self._first_non_finite_step.assign(
        tf.where(is_first, self._global_step, self._first_non_finite_step))
    self._non_finite_terms.assign(tf.where(is_first, bad, self._non_finite_terms))

  # ---- host-side helpers ----

  def raise_if_non_finite(self):
    step = int(self._first_non_finite_step.numpy())
    if step < 0:
      return
    bad = self._non_finite_terms.numpy()
    terms = [name for name, count in zip(self._check_names, bad) if count > 0]
    raise NonFiniteLossError(step, terms)

  def reset_non_finite(self):
    self._first_non_finite_step.assign(-1)
    self._non_finite_terms.assign(tf.zeros_like(self._non_finite_terms))

  def learning_rate(self, optimizer) -> tf.Tensor:
    rate = optimizer.learning_rate
    if callable(rate):
      return rate(self._global_step)
    return tf.convert_to_tensor(rate)

  @property
  def optimizer(self):
    return self._optimizer

  @property
  def backbone_optimizer(self):
    return self._backbone_optimizer

  @property
  def loss_scale_optimizers(self):
    return [o for o in (self._scaled_optimizer, self._scaled_backbone_optimizer) if o is not None]

  @property
  def train_iterator(self):
    """The input iterator if it can be checkpointed, else None."""
    return self._train_iter if self._split_global_batch else None

  @property
  def strategy(self):
    return self._strategy

  @property
  def global_step(self):
    return self._global_step

  @property
  def model(self):
    return self._model
