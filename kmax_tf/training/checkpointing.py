"""Training checkpoints: DeepLab2's object graph plus the input position.

The root object holds `global_step`, the model's `checkpoint_items` (encoder,
heads, ...), `optimizer` and, with a backbone learning-rate multiplier,
`backbone_optimizer` (DeepLab2's keys), and optionally `train_iterator` (the
tf.data position, so a restarted run continues with the next unseen batch) and
`loss_scale` (mixed_float16). TF writes checkpoints atomically (temporary files
renamed on completion) and the `checkpoint` index file last.
"""

import os
import sys
import uuid
from typing import Callable, Mapping, Optional

import tensorflow as tf
from absl import logging

from kmax_tf import common

INPUT_ITERATOR_KEY = 'train_iterator'
LOSS_SCALE_KEY = 'loss_scale'
_MODEL_DIR_CHECKPOINT_NAME = 'ckpt'


def training_checkpoint_items(global_step: tf.Variable, model_items: Mapping[str, object],
                              trainer=None, include_input_iterator: bool = True) -> dict:
  """The dict for `tf.train.Checkpoint(**items)`; see the module docstring."""
  items = dict(global_step=global_step)
  items.update(model_items)
  if trainer is not None:
    items['optimizer'] = trainer.optimizer
    if trainer.backbone_optimizer is not None:
      items['backbone_optimizer'] = trainer.backbone_optimizer
    scaled = trainer.loss_scale_optimizers
    if scaled:
      items[LOSS_SCALE_KEY] = tf.train.Checkpoint(**{f'optimizer_{i}': o
                                                     for i, o in enumerate(scaled)})
    if include_input_iterator and trainer.train_iterator is not None:
      items[INPUT_ITERATOR_KEY] = trainer.train_iterator
  return items


def input_state_problem(iterator) -> Optional[str]:
  """Why `iterator`'s state cannot be checkpointed (one sentence), or None if it can.

  Writes the state of the (not yet started) iterator to TensorFlow's in-memory
  file system, which fails the way the first real save would, e.g. for a
  stateful op in the pipeline.
  """
  if iterator is None:
    return ('with this strategy the input is read through tf.distribute iterators, '
            'which cannot be saved.')
  probe = f'ram://kmax_input_state_probe_{uuid.uuid4().hex}'
  try:
    tf.train.Checkpoint(**{INPUT_ITERATOR_KEY: iterator}).write(probe + '/ckpt')
  except (tf.errors.FailedPreconditionError, tf.errors.UnimplementedError,
          tf.errors.InvalidArgumentError) as error:
    reason = error.message.strip().splitlines()[0]
    reason = reason.split('}}')[-1].split('[Op:')[0].strip().rstrip('.')
    return f'the input pipeline cannot be saved ({reason}).'
  finally:
    if tf.io.gfile.exists(probe):
      tf.io.gfile.rmtree(probe)
  return None


def initial_checkpoint_items(model_items: Mapping[str, object], model_options) -> dict:
  """Items restored from `initial_checkpoint` (DeepLab2: the last layers are optional)."""
  items = dict(model_items)
  if not model_options.restore_semantic_last_layer_from_initial_checkpoint:
    items.pop(common.CKPT_SEMANTIC_LAST_LAYER, None)
  return items


def resolve_checkpoint_path(path: str) -> str:
  """A checkpoint prefix from a prefix, a directory or 'pretrained:NAME'; clear error if none."""
  from kmax_tf import pretrained
  path = pretrained.resolve_reference(path)  # Downloads a registered model on first use.
  if tf.io.gfile.isdir(path) and not tf.io.gfile.exists(path + '.index'):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise ValueError(f'initial_checkpoint directory {path!r} holds no checkpoint.')
    return latest
  if not tf.io.gfile.exists(path + '.index'):
    raise ValueError(f'initial_checkpoint {path!r} not found (no {path}.index).')
  return path


def make_initial_checkpoint_fn(path: str, model, model_items, model_options) -> Callable[[], None]:
  """Returns `init_fn` that loads `initial_checkpoint` into a fresh model.

  Uses `kmax_tf.model.checkpoint_loading.load_deeplab2_checkpoint` when present
  (it knows DeepLab2's layouts); otherwise reads the checkpoint items directly
  and requires a nontrivial match.
  """
  if not path:
    return lambda: None

  def init_fn():
    resolved = resolve_checkpoint_path(path)
    logging.info('Initializing from initial_checkpoint %s', resolved)
    try:
      from kmax_tf.model import checkpoint_loading  # (optional dependency)
    except ImportError:
      checkpoint_loading = None
    if checkpoint_loading is not None and hasattr(checkpoint_loading, 'load_deeplab2_checkpoint'):
      checkpoint_loading.load_deeplab2_checkpoint(
          model, resolved, skip_semantic_last_layer=not (
              model_options.restore_semantic_last_layer_from_initial_checkpoint))
      return
    items = initial_checkpoint_items(model_items, model_options)
    status = tf.train.Checkpoint(**items).read(resolved)
    status.expect_partial().assert_nontrivial_match()

  return init_fn


def writer_directory(model_dir: str, chief: bool, worker: str) -> str:
  """Where this worker writes: model_dir for the chief, a scratch dir otherwise.

  MultiWorkerMirroredStrategy needs every worker to take part in saving; only
  the chief's copy is kept.
  """
  if chief:
    return model_dir
  scratch = os.path.join(model_dir, f'.{worker}_scratch')
  if tf.io.gfile.exists(scratch):  # tf.io.gfile: model_dir may be on gs://.
    tf.io.gfile.rmtree(scratch)
  return scratch


class EvaluationCheckpoint(tf.train.Checkpoint):
  """A checkpoint for evaluation-only runs: training state in the file is expected.

  Training checkpoints also hold optimizer slots and the input position, which an
  evaluator has no objects for; restoring them partially is the intent, so the
  warnings TF prints for unmatched values are silenced.
  """

  def restore(self, save_path, options=None):
    return super().restore(save_path, options=options).expect_partial()


def build_checkpoint_manager(checkpoint: tf.train.Checkpoint, directory: str, global_step,
                             trainer_options, init_fn: Optional[Callable[[], None]] = None
                             ) -> tf.train.CheckpointManager:
  """CheckpointManager keeping `num_checkpoints_to_keep`, every `save_checkpoints_steps`."""
  return tf.train.CheckpointManager(
      checkpoint, directory=directory,
      max_to_keep=trainer_options.num_checkpoints_to_keep,
      step_counter=global_step,
      checkpoint_interval=trainer_options.save_checkpoints_steps,
      checkpoint_name=_MODEL_DIR_CHECKPOINT_NAME,
      init_fn=init_fn)


def restore_latest(checkpoint: tf.train.Checkpoint, model_dir: str) -> Optional[str]:
  """Restores the newest checkpoint of `model_dir` into `checkpoint`; returns its path."""
  latest = tf.train.latest_checkpoint(model_dir)
  if latest is not None:
    checkpoint.restore(latest).expect_partial()
  return latest


def restore_input_position(items: Mapping[str, object], model_dir: str) -> bool:
  """Restores the input iterator from the newest checkpoint, if both exist.

  Returns False (after a warning) when the saved input state does not fit
  the current input pipeline (e.g. a changed pipeline definition); training
  then continues with a fresh input stream and the checkpoint's step, model and
  optimizer state. True otherwise.
  """
  iterator = items.get(INPUT_ITERATOR_KEY)
  latest = tf.train.latest_checkpoint(model_dir)
  if iterator is None or latest is None:
    return True
  try:
    tf.train.Checkpoint(**{INPUT_ITERATOR_KEY: iterator}).read(latest).expect_partial()
  except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError,
          tf.errors.FailedPreconditionError, tf.errors.UnimplementedError) as error:
    logging.warning('The input position saved in %s cannot be restored into this input '
                    'pipeline (%s). Resuming at its step with a fresh input stream.',
                    latest, str(error).splitlines()[0][:300])
    return False
  return True


BROKEN_CHECKPOINTS_DIR = 'broken_checkpoints'


def checkpoint_problem(prefix: str) -> Optional[str]:
  """None if checkpoint `prefix` reads completely, else what is wrong (one line).

  Reads the index and every tensor: a corrupt `.index` or a truncated or
  corrupt `.data-*` shard fails here instead of in the middle of a restore.
  """
  try:
    # Not tf.train.load_checkpoint: on ram:// every prefix looks like a directory.
    reader = tf.compat.v1.train.NewCheckpointReader(prefix)
    dtypes = reader.get_variable_to_dtype_map()
    names = sorted(dtypes)
    # RestoreV2 reads every tensor, the input iterator's variant state included.
    with tf.device('/cpu:0'):
      tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=names, shape_and_slices=[''] * len(names),
                           dtypes=[dtypes[name] for name in names])
  except (tf.errors.OpError, IndexError, ValueError) as error:
    text = getattr(error, 'message', None) or str(error) or type(error).__name__
    return text.strip().split('\n')[0][:300]
  return None


def _checkpoint_files(prefix: str) -> list:
  return sorted(tf.io.gfile.glob(prefix + '.index') + tf.io.gfile.glob(prefix + '.data-*'))


def _set_aside(prefix: str, model_dir: str) -> str:
  """Moves the files of checkpoint `prefix` into `<model_dir>/broken_checkpoints/` (kept)."""
  folder = os.path.join(model_dir, BROKEN_CHECKPOINTS_DIR)
  tf.io.gfile.makedirs(folder)
  name = os.path.basename(prefix)
  suffix, attempt = '', 1
  while any(tf.io.gfile.exists(os.path.join(folder, os.path.basename(f) + suffix))
            for f in _checkpoint_files(prefix)):
    attempt += 1
    suffix = f'.{attempt}'
  for path in _checkpoint_files(prefix):
    tf.io.gfile.rename(path, os.path.join(folder, os.path.basename(path) + suffix))
  return os.path.join(folder, name + suffix)


def newest_intact_checkpoint(model_dir: str, set_aside_broken: bool = True) -> Optional[str]:
  """The newest checkpoint of `model_dir` that reads completely; broken ones named in the log.

  A broken checkpoint (corrupt `.index`, truncated `.data-*`) among those the
  CheckpointManager keeps is reported by name. With `set_aside_broken`, its
  files are moved (never deleted) into `<model_dir>/broken_checkpoints/` and
  the `checkpoint` state file is rewritten to list only the intact ones, so a
  restart resumes from the newest intact checkpoint and the re-save at that
  step cannot overwrite the broken files.

  Returns:
    The newest intact checkpoint prefix, or None when `model_dir` has none.

  Raises:
    ValueError: every kept checkpoint is broken (naming them), rather than
      silently starting from scratch.
  """
  state = tf.train.get_checkpoint_state(model_dir)
  if state is None or not state.model_checkpoint_path:
    return None
  kept = list(state.all_model_checkpoint_paths)
  if state.model_checkpoint_path not in kept:
    kept.append(state.model_checkpoint_path)
  timestamps = list(state.all_model_checkpoint_timestamps)
  broken = {}
  intact = None
  for prefix in reversed(kept):
    problem = checkpoint_problem(prefix)
    if problem is None:
      intact = prefix
      break
    broken[prefix] = problem
  if not broken:
    return intact
  for prefix, problem in broken.items():
    logging.error('Checkpoint %s is broken: %s', prefix, problem)
  if intact is None:
    raise ValueError(f'No intact checkpoint in {model_dir}: ' + '; '.join(
        f'{prefix} is broken ({problem})' for prefix, problem in broken.items()) +
        '. Nothing was moved or deleted; remove or repair them to start again.')
  message = (f'Checkpoint {", ".join(broken)} in {model_dir} cannot be read; falling back '
             f'to the newest intact checkpoint {intact}.')
  if set_aside_broken:
    moved = [_set_aside(prefix, model_dir) for prefix in broken]
    remaining = [prefix for prefix in kept if prefix not in broken]
    remaining_times = None
    if len(timestamps) == len(kept):
      remaining_times = [t for prefix, t in zip(kept, timestamps) if prefix not in broken]
    tf.compat.v1.train.update_checkpoint_state(
        model_dir, intact, all_model_checkpoint_paths=remaining,
        all_model_checkpoint_timestamps=remaining_times,
        last_preserved_timestamp=state.last_preserved_timestamp or None)
    message += f' The broken files were moved, not deleted, to {", ".join(moved)}.*'
  logging.warning('%s', message)
  print(message, file=sys.stderr, flush=True)
  return intact


def check_eval_has_checkpoint(mode: str, model_dir: str, initial_checkpoint: str,
                              eval_initial_model: bool) -> None:
  """`--mode=eval` needs a checkpoint in `model_dir`, unless the initial model is asked for.

  Evaluating a fresh model (random weights, PQ 0) is almost always a wrong
  `--model_dir`; it is allowed explicitly with `eval_initial_model` or with
  `model_options.initial_checkpoint`. (`continuous_eval` waits for the
  trainer's first checkpoint instead.)

  Raises:
    ValueError: naming the directory.
  """
  if mode != 'eval' or eval_initial_model or initial_checkpoint:
    return
  if tf.io.gfile.isdir(model_dir) and tf.train.latest_checkpoint(model_dir) is not None:
    return
  where = 'does not exist' if not tf.io.gfile.isdir(model_dir) else 'holds no checkpoint'
  raise ValueError(f'--mode=eval: {model_dir} {where}. Give the model_dir of a training run '
                   '(the config\'s experiment_name is appended to --model_dir), set '
                   'model_options.initial_checkpoint, or pass --eval_initial_model to evaluate '
                   'the initial model.')
