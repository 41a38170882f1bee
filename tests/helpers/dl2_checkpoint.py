"""Writes DeepLab2-format checkpoints from a manifest and the weight rule.

The reference data in ../shared/dl2_reference defines model weights without
shipping checkpoints: a manifest lists every checkpoint key with its shape,
and a seeded rule gives each key's value (see that folder's README). A
TensorFlow checkpoint restores by object-graph edge names, so a graph of plain
trackable nodes whose attribute names are the key's path components is
indistinguishable from the one DeepLab2's model writes.
"""

import pathlib
import tempfile
import zlib
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import tensorflow as tf

SALT = 'kmax-public-v1'
_ATTRIBUTE_SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'

Manifest = List[Tuple[str, Tuple[int, ...], str]]


def read_manifest(path) -> Manifest:
  """Reads a manifest TSV into [(key, shape, dtype)]."""
  rows = []
  lines = pathlib.Path(path).read_text().splitlines()
  for line in lines[1:]:
    if not line.strip():
      continue
    key, shape, dtype = line.split('\t')
    dims = tuple(int(d) for d in shape.split(',')) if shape else ()
    rows.append((key, dims, dtype))
  return rows


def rule_value(key: str, shape: Tuple[int, ...], salt: str = SALT) -> np.ndarray:
  """The reference README's weight rule for one checkpoint key (float64)."""
  rng = np.random.default_rng(zlib.crc32((salt + key).encode()))
  leaf = key.rsplit('/', 1)[-1]
  if leaf in ('moving_variance', 'gamma', 'layer_scale'):
    return rng.uniform(0.5, 1.5, shape)
  if leaf == 'moving_mean':
    return rng.normal(0, 0.1, shape)
  if leaf in ('beta', 'bias'):
    return rng.normal(0, 0.1, shape)
  scale = 1.0
  if len(shape) >= 2 and leaf not in ('embeddings', 'cluster_centers'):
    if leaf == 'depthwise_kernel':
      fan_in = shape[0] * shape[1]
    else:
      fan_in = int(np.prod(shape[:-1]))
    scale = 1.0 / np.sqrt(fan_in)
  return rng.normal(0, 1, shape) * scale


def manifest_values(manifest: Manifest,
                    overrides: Optional[Mapping[str, np.ndarray]] = None,
                    salt: str = SALT) -> Dict[str, np.ndarray]:
  """All key values: the rule, replaced by `overrides` where given."""
  overrides = dict(overrides or {})
  values = {}
  for key, shape, dtype in manifest:
    if key in overrides:
      value = np.asarray(overrides.pop(key))
      if tuple(value.shape) != tuple(shape):
        raise ValueError(f'override {key}: shape {value.shape} != manifest {shape}')
    else:
      value = rule_value(key, shape, salt)
    values[key] = value.astype(dtype)
  if overrides:
    raise ValueError(f'overrides not in the manifest: {sorted(overrides)[:5]}')
  return values


class _Node(tf.Module):
  pass


def write_checkpoint(values: Mapping[str, np.ndarray], prefix) -> str:
  """Writes `values` ({key path: array}) as a TF checkpoint; returns its path."""
  root_children: Dict[str, object] = {}
  for key, value in values.items():
    parts = key.split('/')
    if parts[0] not in root_children:
      root_children[parts[0]] = _Node() if len(parts) > 1 else None
    if len(parts) == 1:
      root_children[parts[0]] = tf.Variable(value)
      continue
    node = root_children[parts[0]]
    for part in parts[1:-1]:
      child = getattr(node, part, None) if part in vars(node) else None
      if child is None:
        child = _Node()
        setattr(node, part, child)
      node = child
    setattr(node, parts[-1], tf.Variable(value))
  checkpoint = tf.train.Checkpoint(**root_children)
  return checkpoint.write(str(prefix))


def restore_reference(items: Mapping[str, object], manifest_path,
                      moving_stats_path=None, salt: str = SALT) -> Manifest:
  """Restores reference weights strictly into `tf.train.Checkpoint(**items)`.

  Writes the manifest rows under `items`' root names, valued by the rule and,
  where given, the calibrated moving statistics (.npz) of those roots, then
  reads them back with `assert_consumed`.

  Returns:
    The manifest rows that were restored.
  """
  manifest = [row for row in read_manifest(manifest_path) if row[0].split('/')[0] in items]
  stats = {}
  if moving_stats_path is not None:
    with np.load(moving_stats_path) as data:
      stats = {key: data[key] for key in data.files if key.split('/')[0] in items}
  values = manifest_values(manifest, stats, salt)
  with tempfile.TemporaryDirectory() as directory:
    path = write_checkpoint(values, pathlib.Path(directory) / 'ckpt')
    tf.train.Checkpoint(**items).read(path).assert_consumed()
  return manifest


def checkpoint_keys(path) -> Dict[str, Tuple[int, ...]]:
  """{key: shape} of a checkpoint, without the object-graph entry."""
  keys = {}
  for name, shape in tf.train.list_variables(str(path)):
    if name == '_CHECKPOINTABLE_OBJECT_GRAPH':
      continue
    if name.endswith(_ATTRIBUTE_SUFFIX):
      name = name[:-len(_ATTRIBUTE_SUFFIX)]
    keys[name] = tuple(shape)
  return keys
