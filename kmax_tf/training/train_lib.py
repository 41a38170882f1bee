"""run_experiment: builds model, loss, data, trainer/evaluator and drives orbit.Controller.

Modes (DeepLab2's): 'train', 'eval', 'train_and_eval', 'continuous_eval'.

Restart semantics: the checkpoint holds the global step, model and
optimizers. A run killed at any moment and restarted with the same command
restores the newest checkpoint and continues from its step; the steps after
that checkpoint are recomputed once (their updates were lost with the
process), none is counted twice. `initial_checkpoint` is read only when
model_dir holds no checkpoint.

Input position. As DeepLab2 and Model Garden, the training input is by default
not checkpointed: each input worker builds its own pipeline
(`distribute_datasets_from_function`, per-replica batches prefetched to the
device) and a resumed run continues with a fresh input stream.
`checkpoint_input_iterator=INPUT_STATE_REQUIRED` also saves the input position
(exact order on resume; single-worker strategies only, see
`Trainer.train_iterator`), `INPUT_STATE_IF_POSSIBLE` saves it when the pipeline
can be saved. Either is checked at start-up, before any work. The saved state
holds the pipeline's buffers (shuffled records, prefetched batches), so at
large batches and crops it is big: measure before turning it on.
"""

import inspect
import os
import sys
from typing import Callable, Optional

import orbit
import tensorflow as tf
from absl import logging

from kmax_tf import progress
from kmax_tf.config import validation
from kmax_tf.keras_setup import keras
from kmax_tf.training import checkpointing
from kmax_tf.training import distribution
from kmax_tf.training import optimizer as optimizer_lib
from kmax_tf.training import trainer as trainer_lib

MODES = validation.MODES
STOP = 'stop'
RESTORE = 'restore'
# Consecutive non-finite events tolerated with non_finite_loss_action='restore'.
MAX_NON_FINITE_RESTORES = 3
# Values of `checkpoint_input_iterator` (trainer/train.py's flag of that name).
INPUT_STATE_OFF = 'false'
INPUT_STATE_REQUIRED = 'true'
INPUT_STATE_IF_POSSIBLE = 'if_possible'
INPUT_STATE_CHOICES = (INPUT_STATE_OFF, INPUT_STATE_REQUIRED, INPUT_STATE_IF_POSSIBLE)


def _default_model_fn(config):
  from kmax_tf.model import builder  # heavy import, only when used
  return builder.build_model(config)


def _default_loss_fn(config, model):
  from kmax_tf.losses import builder
  # One auxiliary loss per transformer decoder layer of this model, as DeepLab2.
  return builder.build_loss(config, num_auxiliary_outputs=model.auxiliary_output_number)


def _default_dataset_fn(dataset_options, is_training: bool, input_context=None):
  from kmax_tf.data import dataset_descriptors
  from kmax_tf.data import input_pipeline
  descriptor = dataset_descriptors.descriptor_from_options(dataset_options)
  return input_pipeline.build_dataset(dataset_options, descriptor, is_training=is_training,
                                      input_context=input_context)


def _input_state_mode(value) -> str:
  """Normalizes `checkpoint_input_iterator` (a bool or one of INPUT_STATE_CHOICES)."""
  if isinstance(value, bool):
    return INPUT_STATE_REQUIRED if value else INPUT_STATE_OFF
  if value not in INPUT_STATE_CHOICES:
    raise ValueError(f'checkpoint_input_iterator={value!r}; use one of {INPUT_STATE_CHOICES}.')
  return value


def _training_input(dataset_fn, dataset_options, per_worker: bool):
  """The trainer's input: a per-worker dataset function, or one global-batch Dataset.

  `per_worker` gives `input_context -> Dataset` for
  `strategy.distribute_datasets_from_function` (one pipeline per input worker,
  per-replica batches), when `dataset_fn` takes an `input_context`.
  """
  if per_worker and 'input_context' in inspect.signature(dataset_fn).parameters:
    return lambda input_context: dataset_fn(dataset_options, True, input_context=input_context)
  return dataset_fn(dataset_options, True)


def _check_input_state(trainer, mode: str) -> bool:
  """Whether the input position will be checkpointed; fails or warns in one line.

  Runs before any training step: a pipeline that cannot be saved (a stateful
  op in it, a multi-worker strategy) is reported here, not at the first save.
  """
  if mode == INPUT_STATE_OFF:
    return False
  problem = checkpointing.input_state_problem(trainer.train_iterator)
  if problem is None:
    return True
  if mode == INPUT_STATE_REQUIRED:
    raise ValueError(f'--checkpoint_input_iterator=true, but {problem} Use '
                     f'--checkpoint_input_iterator={INPUT_STATE_IF_POSSIBLE} to train without '
                     'it, or false (the default).')
  message = f'The training input position is not checkpointed: {problem}'
  logging.warning(message)
  print(message, file=sys.stderr, flush=True)
  return False


def _default_evaluator_fn(config, model, global_step, model_dir, dataset):
  from kmax_tf.training import evaluator
  return evaluator.Evaluator(config, model, global_step, model_dir, dataset)


def _check_non_finite_action(solver_options) -> str:
  action = solver_options.non_finite_loss_action or STOP
  if action not in (STOP, RESTORE):
    raise ValueError(f'trainer_options.solver_options.non_finite_loss_action={action!r}; use '
                     f'{STOP!r} or {RESTORE!r}.')
  return action


def _build_model(model, crop_size):
  if model.built or not crop_size:
    return
  model(keras.Input(list(crop_size) + [3]), training=False)


def run_experiment(mode: str, config, model_dir: str, *,
                   strategy: Optional[tf.distribute.Strategy] = None,
                   strategy_name: str = '', master: Optional[str] = None, num_gpus: int = 0,
                   model_fn: Optional[Callable] = None, loss_fn: Optional[Callable] = None,
                   dataset_fn: Optional[Callable] = None,
                   evaluator_fn: Optional[Callable] = None,
                   checkpoint_input_iterator=INPUT_STATE_OFF,
                   use_tf_while_loop: bool = True,
                   progress_stream=None, eval_initial_model: bool = False):
  """Runs an experiment.

  Args:
    mode: one of MODES.
    config: `config_pb2.ExperimentOptions`.
    model_dir: directory for checkpoints (`ckpt-<step>`), summaries (`train/`,
      `eval/`) and visualizations (`vis/`).
    strategy: a strategy to use; else built by `distribution.create_strategy`
      from `strategy_name`, `master`, `num_gpus`.
    model_fn: config -> keras model with `.checkpoint_items` (default
      `kmax_tf.model.builder.build_model`).
    loss_fn: (config, model) -> loss callable (default
      `kmax_tf.losses.builder.build_loss` with the model's auxiliary output count).
    dataset_fn: (dataset_options, is_training[, input_context]) -> batched
      tf.data.Dataset (default `kmax_tf.data.input_pipeline.build_dataset`);
      with an `input_context` parameter it is called once per input worker.
    evaluator_fn: (config, model, global_step, model_dir, dataset) -> an
      orbit evaluator (default `kmax_tf.training.evaluator.Evaluator`).
    checkpoint_input_iterator: one of INPUT_STATE_CHOICES (or a bool): whether
      the training input position is checkpointed; see the module docstring.
    use_tf_while_loop: run `steps_per_loop` steps inside one graph loop.
    progress_stream: where progress lines go (default stdout).
    eval_initial_model: allow mode 'eval' without a checkpoint in model_dir.

  Returns:
    The last evaluation results (dict name -> numpy value), or None.

  Raises:
    ValueError: for a bad mode or config value.
    trainer.NonFiniteLossError: when a loss goes NaN/Inf (after the allowed
      restores, with non_finite_loss_action='restore').
  """
  if mode not in MODES:
    raise ValueError(f'--mode={mode!r} is not one of {MODES}.')
  solver_options = config.trainer_options.solver_options
  non_finite_action = _check_non_finite_action(solver_options)
  input_state = _input_state_mode(checkpoint_input_iterator)
  precision = optimizer_lib.check_precision_policy(solver_options.mixed_precision_policy)
  keras.mixed_precision.set_global_policy(precision or 'float32')

  model_fn = model_fn or _default_model_fn
  loss_fn = loss_fn or _default_loss_fn
  dataset_fn = dataset_fn or _default_dataset_fn
  evaluator_fn = evaluator_fn or _default_evaluator_fn
  strategy = strategy or distribution.create_strategy(strategy_name, master, num_gpus)
  logging.info('Strategy %s with %d replicas', type(strategy).__name__,
               strategy.num_replicas_in_sync)
  chief = distribution.is_chief(strategy)
  checkpointing.check_eval_has_checkpoint(mode, model_dir, config.model_options.initial_checkpoint,
                                          eval_initial_model)
  tf.io.gfile.makedirs(model_dir)
  checkpointing.newest_intact_checkpoint(model_dir, set_aside_broken=chief)

  trainer = evaluator = None
  with strategy.scope():
    model = model_fn(config)
    model_items = dict(model.checkpoint_items)
    global_step = orbit.utils.create_global_step()
    if 'train' in mode:
      _build_model(model, config.train_dataset_options.crop_size)
      train_input = _training_input(dataset_fn, config.train_dataset_options,
                                    per_worker=input_state == INPUT_STATE_OFF)
      trainer = trainer_lib.Trainer(
          model, loss_fn(config, model), train_input, solver_options, global_step,
          backbone=model_items.get('encoder'), use_tf_while_loop=use_tf_while_loop,
          checkpointable_input=input_state != INPUT_STATE_OFF)
    if 'eval' in mode:
      _build_model(model, config.eval_dataset_options.crop_size)
      evaluator = evaluator_fn(config, model, global_step, model_dir,
                               dataset_fn(config.eval_dataset_options, False))

  save_input = trainer is not None and _check_input_state(trainer, input_state)
  checkpoint_items = checkpointing.training_checkpoint_items(
      global_step, model_items, trainer, include_input_iterator=save_input)
  if not checkpointing.restore_input_position(checkpoint_items, model_dir):
    checkpoint_items.pop(checkpointing.INPUT_ITERATOR_KEY)
  checkpoint_class = tf.train.Checkpoint if trainer else checkpointing.EvaluationCheckpoint
  checkpoint = checkpoint_class(**checkpoint_items)
  init_fn = checkpointing.make_initial_checkpoint_fn(
      config.model_options.initial_checkpoint, model, model_items, config.model_options)
  write_dir = model_dir
  if not chief:
    write_dir = checkpointing.writer_directory(model_dir, chief,
                                               distribution.worker_id(strategy))
    read_init = init_fn

    def init_fn():  # Non-chief workers start from the chief's newest checkpoint.
      if checkpointing.restore_latest(checkpoint, model_dir) is None:
        read_init()

  manager = checkpointing.build_checkpoint_manager(
      checkpoint, write_dir, global_step, config.trainer_options, init_fn)

  total_steps = solver_options.training_number_of_steps
  printer = None
  train_actions, eval_actions = [], []
  if trainer is not None:
    printer = progress.ProgressPrinter(global_step.numpy, total_steps, progress_stream)
    train_actions.append(printer)
    eval_actions.append(lambda _: printer.restart())
  preemption_handler = None
  if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and trainer is not None:
    preemption_handler = tf.distribute.experimental.PreemptionCheckpointHandler(
        strategy.cluster_resolver, manager)
    train_actions.append(lambda _: preemption_handler.save_checkpoint_if_preempted(
        checkpoint_number=int(global_step.numpy())))

  summary_dir = os.path.join(model_dir, 'train') if chief else None
  eval_summary_dir = os.path.join(model_dir, 'eval') if chief else None
  controller = orbit.Controller(
      strategy=strategy, trainer=trainer, evaluator=evaluator, global_step=global_step,
      steps_per_loop=config.trainer_options.steps_per_loop if trainer is not None else None,
      checkpoint_manager=manager,
      summary_interval=config.trainer_options.save_summaries_steps if chief and trainer else None,
      summary_dir=summary_dir, eval_summary_dir=eval_summary_dir,
      train_actions=train_actions, eval_actions=eval_actions)
  if printer is not None:
    printer.restart()

  with strategy.scope():
    if mode in ('eval', 'continuous_eval'):
      return _run_eval(mode, controller, config, model_dir)
    if manager.latest_checkpoint is None:
      controller.save_checkpoint()  # Step 0 (or the initial checkpoint) as DeepLab2.
    return _run_training(mode, controller, trainer, config, checkpoint_items, model_dir,
                         non_finite_action, printer)


def _run_eval(mode, controller, config, model_dir):
  options = config.evaluator_options
  if mode == 'eval':
    if tf.train.latest_checkpoint(model_dir) is None:
      logging.warning('No checkpoint in %s: evaluating the initial model.', model_dir)
    return controller.evaluate(steps=options.eval_steps)
  timeout = None if options.continuous_eval_timeout == -1 else options.continuous_eval_timeout
  return controller.evaluate_continuously(steps=options.eval_steps, timeout=timeout)


def _run_training(mode, controller, trainer, config, checkpoint_items, model_dir,
                  non_finite_action, printer):
  solver_options = config.trainer_options.solver_options
  total_steps = solver_options.training_number_of_steps
  restores = 0
  while True:
    try:
      if mode == 'train':
        controller.train(steps=total_steps)
        return None
      options = config.evaluator_options
      return controller.train_and_evaluate(
          train_steps=total_steps, eval_steps=options.eval_steps,
          eval_interval=options.eval_interval)
    except trainer_lib.NonFiniteLossError as error:
      logging.error('%s', error)
      if non_finite_action == STOP:
        raise
      if restores >= MAX_NON_FINITE_RESTORES:
        raise _restores_spent_error(error, restores) from None
      restores += 1
      _restore_after_non_finite(trainer, checkpoint_items, model_dir, error)
      printer.restart()


def _restores_spent_error(error, restores):
  """The non-finite error once non_finite_loss_action='restore' has used its restores."""
  spent = trainer_lib.NonFiniteLossError(error.step, error.terms)
  spent.args = (
      f'Non-finite training loss at step {error.step} (0-based index of the update): '
      f'{", ".join(error.terms)} not finite, again after {restores} restores of the newest '
      "checkpoint (non_finite_loss_action='restore' allows "
      f'{MAX_NON_FINITE_RESTORES}). No checkpoint was written from a non-finite state. Lower the '
      'learning rate or enable solver_options.use_gradient_clipping.',)
  return spent


def _restore_after_non_finite(trainer, checkpoint_items, model_dir, error):
  """Reloads model, optimizers and step from the newest checkpoint.

  The input iterator is not rewound: the batches that led to the non-finite
  loss are skipped rather than replayed.
  """
  latest = tf.train.latest_checkpoint(model_dir)
  if latest is None:
    raise error
  restore_items = {name: value for name, value in checkpoint_items.items()
                   if name != checkpointing.INPUT_ITERATOR_KEY}
  tf.train.Checkpoint(**restore_items).restore(latest).expect_partial()
  trainer.reset_non_finite()
  message = (f'Non-finite loss at step {error.step} ({", ".join(error.terms)}); restored '
             f'{latest} and continuing with the following batches.')
  logging.warning(message)
  print(message, file=sys.stderr, flush=True)


def print_results(results, stream=None) -> None:
  """Prints the evaluation metrics (PQ/SQ/RQ, mIoU, ...) one per line."""
  stream = stream or sys.stdout
  headline = [f'{label} {100 * float(results[key]):.2f}'
              for label, key in (('PQ', 'evaluation/pq/PQ'), ('SQ', 'evaluation/pq/SQ'),
                                 ('RQ', 'evaluation/pq/RQ'), ('mIoU', 'evaluation/iou/IoU'))
              if key in results]
  if headline:
    stream.write('Evaluation (percent): ' + ' | '.join(headline) + '\n')
  for name in sorted(results):
    value = results[name]
    try:
      value = float(value)
    except (TypeError, ValueError):
      continue
    stream.write(f'{name}: {value:.4f}\n')
  stream.flush()
