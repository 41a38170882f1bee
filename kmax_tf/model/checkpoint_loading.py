"""Restores DeepLab2 checkpoints into kmax_tf models, strictly.

Three kinds of files are accepted, as DeepLab2 accepts them:

* 'full': a DeepLab2 kMaX training checkpoint (`initial_checkpoint` of a
  released model). Its root children are the model's `checkpoint_items`
  (`encoder`, `pixel_decoder`, ...); `global_step`, `optimizer`,
  `backbone_optimizer`, `save_counter` and optimizer slots are ignored.
* 'backbone': an ImageNet-pretrained backbone checkpoint (`initial_checkpoint`
  for ResNet / MaX-S backbones). Only the `encoder/` subtree is restored. TF
  Model Garden's trainer writes that subtree as `backbone/_encoder/`; DeepLab2
  accepts both layouts, and so does this module.
* 'pretrained_weights': ConvNeXt `backbone.pretrained_weights`. DeepLab2 calls
  Keras `load_weights` on the encoder itself, so the keys are rooted at the
  encoder (`downsample_layers/...`, `stages/...`), without `encoder/`.

Unlike DeepLab2 (which reads with `expect_partial()`), nothing is restored
unless the checkpoint's variable keys and shapes (`tf.train.list_variables`)
equal what the model expects: a wrong file, another architecture or a partial
file raises a ValueError listing the missing, unexpected and shape-mismatched
keys. The model's keys are computed by walking its object graph exactly the way
TensorFlow names checkpoint entries (breadth first, first path wins).
"""

import collections
import dataclasses
import os
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from kmax_tf import common
from kmax_tf.keras_setup import keras

KIND_AUTO = 'auto'
KIND_FULL = 'full'
KIND_BACKBONE = 'backbone'
KIND_PRETRAINED_WEIGHTS = 'pretrained_weights'
_KIND_ALIASES = {'deeplab2': KIND_FULL, 'initial_checkpoint': KIND_FULL,
                 'encoder': KIND_BACKBONE, 'imagenet': KIND_BACKBONE}
KINDS = (KIND_AUTO, KIND_FULL, KIND_BACKBONE, KIND_PRETRAINED_WEIGHTS)

ENCODER_ITEM = 'encoder'
MODEL_GARDEN_ENCODER_PREFIX = 'backbone/_encoder/'
# Root children of training checkpoints that are not model weights: DeepLab2's,
# plus the input position and loss scale that kmax_tf's trainer also saves
# (see kmax_tf/training/checkpointing.py).
TRAINING_STATE_ITEMS = ('global_step', 'optimizer', 'backbone_optimizer', 'save_counter',
                        'train_iterator', 'loss_scale')

_VARIABLE_SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'
_OBJECT_GRAPH_KEY = '_CHECKPOINTABLE_OBJECT_GRAPH'
_OPTIMIZER_SLOT_MARK = '/.OPTIMIZER_SLOT/'
_MAX_LISTED_KEYS = 20

Shape = Tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class RestoreSummary:
  """What `load_deeplab2_checkpoint` restored.

  Attributes:
    checkpoint_path: the checkpoint prefix that was read.
    kind: 'full', 'backbone' or 'pretrained_weights'.
    layout: where the weights sit in the file: 'root items', 'encoder/',
      'backbone/_encoder/' or 'encoder root'.
    restored_items: model checkpoint items that were restored, e.g. ('encoder',).
    skipped_items: model checkpoint items deliberately left as they were.
    num_variables: number of variables restored.
    num_parameters: number of scalars restored.
    num_ignored_keys: checkpoint keys not restored (training state, optimizer
      slots, other subtrees for a backbone restore, the skipped items).
    missing_keys / unexpected_keys: non-empty only with strict=False.
  """
  checkpoint_path: str
  kind: str
  layout: str
  restored_items: Tuple[str, ...]
  skipped_items: Tuple[str, ...]
  num_variables: int
  num_parameters: int
  num_ignored_keys: int
  missing_keys: Tuple[str, ...] = ()
  unexpected_keys: Tuple[str, ...] = ()


def resolve_checkpoint_path(path) -> str:
  """Turns a checkpoint prefix, `.index` file or directory into a readable prefix.

  Args:
    path: a checkpoint prefix (`.../ckpt-100`), its `.index` file, a
      directory (its latest checkpoint, or its only `*.index` file when the
      directory has no `checkpoint` state file, as in released tarballs), or
      'pretrained:NAME' (a registered model, downloaded on first use; see
      kmax_tf/pretrained).

  Returns:
    The checkpoint prefix.

  Raises:
    ValueError: the path does not exist or is not a TensorFlow checkpoint.
  """
  from kmax_tf import pretrained
  path = pretrained.resolve_reference(os.fspath(path))
  if not path:
    raise ValueError('Checkpoint path is empty.')
  if path.endswith('.index') and tf.io.gfile.exists(path):
    path = path[:-len('.index')]
  # A prefix first: on ram:// every prefix of a file also counts as a directory.
  if tf.io.gfile.isdir(path) and not tf.io.gfile.exists(path + '.index'):
    prefix = tf.train.latest_checkpoint(path)
    if prefix is None:
      index_files = sorted(tf.io.gfile.glob(os.path.join(path, '*.index')))
      if len(index_files) != 1:
        found = ', '.join(os.path.basename(f) for f in index_files) or 'none'
        raise ValueError(
            f'Checkpoint directory {path} has no `checkpoint` state file and not exactly one '
            f'*.index file (found: {found}); pass the checkpoint prefix instead.')
      prefix = index_files[0][:-len('.index')]
    path = prefix
  elif not tf.io.gfile.exists(path) and not tf.io.gfile.exists(path + '.index'):
    raise ValueError(f'Checkpoint {path} does not exist (neither the path nor {path}.index).')
  _read_checkpoint_shapes(path)  # Fails clearly if it is not a checkpoint.
  return path


def _read_checkpoint_shapes(prefix: str) -> Dict[str, Shape]:
  """{key without the VARIABLE_VALUE suffix: shape} of every tensor in the file."""
  try:
    # The reader directly (not tf.train.list_variables, which treats a ram:// prefix as a
    # directory).
    reader = tf.compat.v1.train.NewCheckpointReader(prefix)
    listed = sorted(reader.get_variable_to_shape_map().items())
  except (tf.errors.OpError, ValueError, OSError) as error:
    message = str(error).strip().splitlines()[0] if str(error).strip() else ''
    hint = ''
    if prefix.endswith(('.h5', '.hdf5', '.keras')):
      hint = (' Keras HDF5 / .keras weight files are not supported: DeepLab2 checkpoints and '
              'ConvNeXt pretrained_weights are TensorFlow checkpoints (prefix + .index + .data).')
    raise ValueError(
        f'{prefix} is not a readable TensorFlow checkpoint '
        f'({type(error).__name__}: {message[:300]}).{hint}') from None
  shapes = {}
  for name, shape in listed:
    if name == _OBJECT_GRAPH_KEY:
      continue
    if name.endswith(_VARIABLE_SUFFIX):
      name = name[:-len(_VARIABLE_SUFFIX)]
    shapes[name] = tuple(int(d) for d in shape)
  return shapes


def _escape_edge_name(name: str) -> str:
  # TensorFlow escapes '.' and '/' inside one object-graph edge name.
  return name.replace('.', '..').replace('/', '.S')


def object_graph_variables(root) -> Dict[str, tf.Variable]:
  """{checkpoint key: variable} that `tf.train.Checkpoint`-writing `root` would produce.

  Keys exclude the `/.ATTRIBUTES/VARIABLE_VALUE` suffix. A variable reachable
  along several paths is named after the first path of a breadth-first walk in
  child order, as TensorFlow does.
  """
  view = tf.train.TrackableView(root)
  paths = {id(root): ()}
  keep_alive = [root]
  queue = collections.deque([root])
  variables = {}
  while queue:
    node = queue.popleft()
    for name, child in view.children(node).items():
      if id(child) in paths:
        continue
      paths[id(child)] = paths[id(node)] + (_escape_edge_name(name),)
      keep_alive.append(child)
      if isinstance(child, tf.Variable):
        variables['/'.join(paths[id(child)])] = child
      queue.append(child)
  return variables


def _checkpoint_items(model) -> Dict[str, Any]:
  if isinstance(model, Mapping):
    items = dict(model)
  elif hasattr(model, 'checkpoint_items'):
    items = dict(model.checkpoint_items)
  else:
    raise TypeError(
        f'model must have `checkpoint_items` (like KMaXDeepLab) or be a dict of them; got '
        f'{type(model).__name__}.')
  if not items:
    raise ValueError('The model has no checkpoint items.')
  return items


def _is_training_state(key: str) -> bool:
  return key.split('/', 1)[0] in TRAINING_STATE_ITEMS or _OPTIMIZER_SLOT_MARK in key


def _format_keys(title: str, keys: List[str], describe) -> List[str]:
  if not keys:
    return []
  shown = keys[:_MAX_LISTED_KEYS]
  lines = [f'{title} ({len(keys)}; first {len(shown)}):']
  lines += [f'  {describe(k)}' for k in shown]
  return lines


def _compare_keys(expected: Mapping[str, Shape], found: Mapping[str, Shape]):
  missing = sorted(set(expected) - set(found))
  unexpected = sorted(set(found) - set(expected))
  mismatched = sorted(k for k in set(expected) & set(found) if tuple(expected[k]) != found[k])
  return missing, unexpected, mismatched


def _mismatch_error(prefix: str, kind: str, layout: str, expected, found, missing, unexpected,
                    mismatched) -> ValueError:
  lines = [
      f'Checkpoint {prefix} does not match the model (kind={kind!r}, layout {layout!r}): '
      f'{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} '
      f'shape-mismatched of {len(expected)} expected variables; nothing was restored.']
  if not set(expected) & set(found):
    lines.append('No key in common: this is probably a checkpoint of another architecture, '
                 'or another kind of checkpoint (see `kind`).')
  lines += _format_keys('Missing (the model has them, the checkpoint does not)', missing,
                        lambda k: f'{k} {list(expected[k])}')
  lines += _format_keys('Unexpected (in the checkpoint, not in the model)', unexpected,
                        lambda k: f'{k} {list(found[k])}')
  lines += _format_keys('Shape mismatch (checkpoint vs model)', mismatched,
                        lambda k: f'{k}: {list(found[k])} vs {list(expected[k])}')
  return ValueError('\n'.join(lines))


def _shapes_differ(items: Mapping[str, Any], found: Mapping[str, Shape]) -> bool:
  """Whether a variable of `items` has another shape in the checkpoint (`found`)."""
  variables = object_graph_variables(tf.train.Checkpoint(**items))
  return any(key in found and tuple(variable.shape.as_list()) != found[key]
             for key, variable in variables.items())


def _infer_kind(keys, items: Mapping[str, Any]) -> str:
  top_level = {k.split('/', 1)[0] for k in keys if not _is_training_state(k)}
  if any(k.startswith(MODEL_GARDEN_ENCODER_PREFIX) for k in keys):
    return KIND_BACKBONE
  if top_level & (set(items) - {ENCODER_ITEM}):
    return KIND_FULL
  if ENCODER_ITEM in top_level:
    return KIND_BACKBONE
  return KIND_PRETRAINED_WEIGHTS


def load_deeplab2_checkpoint(model, path, *, kind: str = KIND_AUTO,
                             skip_semantic_last_layer: bool = False,
                             strict: bool = True) -> RestoreSummary:
  """Restores a DeepLab2 checkpoint into `model`, after checking keys and shapes.

  Args:
    model: a built model with a `checkpoint_items` dict (KMaXDeepLab), or such a
      dict itself (e.g. {'encoder': encoder}). Its variables must exist: call the
      model once before loading.
    path: checkpoint prefix, its `.index` file, or a directory (latest checkpoint).
    kind: 'auto' (inferred from the keys), 'full', 'backbone' or
      'pretrained_weights' (see the module docstring).
    skip_semantic_last_layer: leave `semantic_last_layer` as it is, like DeepLab2's
      `restore_semantic_last_layer_from_initial_checkpoint: false` (e.g. for another
      number of classes). `transformer_class_head` is then also left as it is
      when its shapes differ from the checkpoint's (another number of classes;
      DeepLab2 would fail on the mismatch); with the same number of classes it
      is restored, as in DeepLab2. Only for kind 'full'.
    strict: if False, missing and unexpected keys are logged and returned in the
      summary instead of raising; shape mismatches always raise.

  Returns:
    A RestoreSummary.

  Raises:
    ValueError: bad path, not a checkpoint, unknown kind, unbuilt model, or
      keys/shapes that do not match (the message lists them).
  """
  kind = _KIND_ALIASES.get(kind, kind)
  if kind not in KINDS:
    raise ValueError(f'kind must be one of {KINDS}, got {kind!r}.')
  items = _checkpoint_items(model)
  prefix = resolve_checkpoint_path(path)
  found_all = _read_checkpoint_shapes(prefix)
  if kind == KIND_AUTO:
    kind = _infer_kind(found_all, items)
  if skip_semantic_last_layer and kind != KIND_FULL:
    raise ValueError('skip_semantic_last_layer applies only to kind="full" checkpoints; '
                     f'{prefix} is being restored as {kind!r}.')

  skipped_items: Tuple[str, ...] = ()
  if kind == KIND_FULL:
    layout = 'root items'
    if skip_semantic_last_layer:
      skipped_items = (common.CKPT_SEMANTIC_LAST_LAYER,)
      class_head = common.CKPT_TRANSFORMER_CLASS_HEAD
      if class_head in items and _shapes_differ({class_head: items[class_head]}, found_all):
        skipped_items += (class_head,)
    restore_items = {k: v for k, v in items.items() if k not in skipped_items}
    root = tf.train.Checkpoint(**restore_items)
    expected_vars = object_graph_variables(root)
    found = {k: s for k, s in found_all.items()
             if not _is_training_state(k) and k.split('/', 1)[0] not in skipped_items}
    reader_root = root
  else:
    if ENCODER_ITEM not in items:
      raise ValueError(f'The model has no {ENCODER_ITEM!r} checkpoint item to restore '
                       f'{prefix} into (items: {sorted(items)}).')
    encoder = items[ENCODER_ITEM]
    restore_items = {ENCODER_ITEM: encoder}
    if kind == KIND_BACKBONE:
      model_garden = any(k.startswith(MODEL_GARDEN_ENCODER_PREFIX) for k in found_all)
      root = tf.train.Checkpoint(encoder=encoder)
      expected_vars = object_graph_variables(root)
      if model_garden:
        layout = MODEL_GARDEN_ENCODER_PREFIX
        found = {ENCODER_ITEM + '/' + k[len(MODEL_GARDEN_ENCODER_PREFIX):]: s
                 for k, s in found_all.items()
                 if k.startswith(MODEL_GARDEN_ENCODER_PREFIX) and not _is_training_state(k)}
        # DeepLab2 reads this layout through a nested `backbone/_encoder` root.
        reader_root = tf.train.Checkpoint(backbone=tf.train.Checkpoint(_encoder=encoder))
      else:
        layout = ENCODER_ITEM + '/'
        found = {k: s for k, s in found_all.items()
                 if k.startswith(layout) and not _is_training_state(k)}
        reader_root = root
    else:
      layout = 'encoder root'
      root = tf.train.Checkpoint(root=encoder)
      expected_vars = object_graph_variables(encoder)
      found = {k: s for k, s in found_all.items() if not _is_training_state(k)}
      reader_root = root

  unbuilt = sorted(name for name, item in restore_items.items()
                   if isinstance(item, keras.layers.Layer) and not item.built)
  if unbuilt or not expected_vars:
    raise ValueError(f'The model has no variables yet (unbuilt items: {unbuilt}): build it '
                     '(call it on an input) before loading a checkpoint.')
  expected = {k: tuple(v.shape.as_list()) for k, v in expected_vars.items()}
  missing, unexpected, mismatched = _compare_keys(expected, found)
  if mismatched or (strict and (missing or unexpected)):
    raise _mismatch_error(prefix, kind, layout, expected, found, missing, unexpected, mismatched)
  if missing or unexpected:
    logging.warning('Partial restore of %s: %d model variables not in the checkpoint (e.g. %s), '
                    '%d checkpoint keys not in the model (e.g. %s).', prefix, len(missing),
                    missing[:3], len(unexpected), unexpected[:3])

  status = reader_root.read(prefix)
  status.expect_partial()
  if not missing:
    try:
      status.assert_existing_objects_matched()
    except AssertionError as error:  # Keys matched, so this means a graph-walk bug.
      raise ValueError(f'Restoring {prefix} left variables unmatched: {error}') from None

  restored = [k for k in expected if k not in missing]
  return RestoreSummary(
      checkpoint_path=prefix,
      kind=kind,
      layout=layout,
      restored_items=tuple(sorted(restore_items)),
      skipped_items=skipped_items,
      num_variables=len(restored),
      num_parameters=int(sum(int(np.prod(expected[k])) for k in restored)),
      num_ignored_keys=len(found_all) - len(found) + len(unexpected),
      missing_keys=tuple(missing),
      unexpected_keys=tuple(unexpected),
  )
