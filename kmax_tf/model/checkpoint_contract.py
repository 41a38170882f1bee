"""DeepLab2's checkpoint naming contract for kMaX-DeepLab (the one place).

DeepLab2 checkpoints are written as `tf.train.Checkpoint(**model.checkpoint_items)`
(training checkpoints add `global_step`, `optimizer`, `backbone_optimizer`). A
variable's key is its attribute path from that root, e.g.
`transformer_decoder/_kmax_decoder/0/_block1_transformer/_memory_qkv_conv_bn/_conv/kernel`,
so restoring needs the same root children and the same attribute names below
them (Keras 2 tracking: private attributes keep their underscore, lists become
`/0`, `/1`, ...).

Root children (in DeepLab2's order):

  encoder                            pixel encoder (backbone)
  pixel_decoder                      kMaX pixel decoder
  transformer_decoder                kMaX transformer decoder
  pixel_space_head                   prediction head: pixel embedding head
  transformer_mask_head              prediction head: mask kernel projection
  transformer_class_head             prediction head: class logits
  pixel_space_feature_batch_norm     prediction head: BN of the pixel embedding
  pixel_space_mask_batch_norm        prediction head: BN of the mask logits
  semantic_decoder                   only with the auxiliary semantic decoder
                                     (DeepLab2: COCO, ADE20K; not Cityscapes)
  semantic_head_without_last_layer   auxiliary semantic head conv block
  semantic_last_layer                auxiliary semantic head final 1x1 conv

Below the root, the attribute names are those of the modules themselves:
`kmax_tf.layers.checkpoint_names` attaches the numbered ones (`_block{i}`,
`_block{i}_transformer`, `_conv{i}_bn_act`, ...); `prediction_head`,
`transformer_decoder` and the pixel encoder/decoder modules use DeepLab2's
attribute names as plain attributes. The manifests in the reference data
(`manifests/*.tsv`) list every key; tests compare against them.
"""

import collections
from typing import Dict, Mapping, Tuple

import tensorflow as tf

from kmax_tf import common

ENCODER = 'encoder'
PIXEL_DECODER = 'pixel_decoder'
TRANSFORMER_DECODER = 'transformer_decoder'

HEAD_CHILDREN = (
    common.CKPT_PIXEL_SPACE_HEAD,
    common.CKPT_TRANSFORMER_MASK_HEAD,
    common.CKPT_TRANSFORMER_CLASS_HEAD,
    common.CKPT_PIXEL_SPACE_FEATURE_BATCH_NORM,
    common.CKPT_PIXEL_SPACE_MASK_BATCH_NORM,
)
SEMANTIC_DECODER_CHILD = common.CKPT_SEMANTIC_DECODER
SEMANTIC_HEAD_CHILDREN = (
    common.CKPT_SEMANTIC_HEAD_WITHOUT_LAST_LAYER,
    common.CKPT_SEMANTIC_LAST_LAYER,
)
# Extra children of DeepLab2 training checkpoints (restore with expect_partial()).
TRAINING_ONLY_CHILDREN = ('global_step', 'optimizer', 'backbone_optimizer')

_VARIABLE_SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'


def root_children(use_semantic_decoder: bool, use_semantic_head: bool = True) -> Tuple[str, ...]:
  """Root child names of a kMaX-DeepLab checkpoint, in DeepLab2's order."""
  names = (ENCODER, PIXEL_DECODER, TRANSFORMER_DECODER) + HEAD_CHILDREN
  if use_semantic_head and use_semantic_decoder:
    names += (SEMANTIC_DECODER_CHILD,)
  if use_semantic_head:
    names += SEMANTIC_HEAD_CHILDREN
  return names


def checkpoint_items(encoder, pixel_decoder, transformer_decoder,
                     head_items: Mapping[str, object]) -> Dict[str, object]:
  """The root dict `tf.train.Checkpoint(**items)` needs, validated.

  Args:
    encoder: the pixel encoder.
    pixel_decoder: the pixel decoder.
    transformer_decoder: the transformer decoder.
    head_items: the prediction head's `checkpoint_items`.

  Returns:
    {root child name: trackable}.
  """
  items = {ENCODER: encoder, PIXEL_DECODER: pixel_decoder,
           TRANSFORMER_DECODER: transformer_decoder}
  items.update(head_items)
  expected = set(root_children(SEMANTIC_DECODER_CHILD in head_items,
                               SEMANTIC_HEAD_CHILDREN[0] in head_items))
  if set(items) != expected:
    raise ValueError(f'checkpoint root children {sorted(items)} do not follow the DeepLab2 '
                     f'contract {sorted(expected)}')
  return items


def checkpoint_variable_keys(items: Mapping[str, object]) -> Dict[str, Tuple[int, ...]]:
  """Keys and shapes that `tf.train.Checkpoint(**items).write()` would produce.

  Walks the object graph breadth-first as TensorFlow does (a variable reachable
  by several paths is saved under the first), without writing anything.

  Args:
    items: checkpoint root children.

  Returns:
    {key without '/.ATTRIBUTES/VARIABLE_VALUE': shape}, keys as in the manifests.
  """
  root = tf.train.Checkpoint(**items)
  view = tf.train.TrackableView(root)
  keys = {}
  seen = {id(root)}
  queue = collections.deque([(root, '')])
  while queue:
    node, path = queue.popleft()
    for name, child in view.children(node).items():
      if id(child) in seen:
        continue
      seen.add(id(child))
      child_path = f'{path}/{name}' if path else name
      if isinstance(child, tf.Variable):
        keys[child_path] = tuple(child.shape.as_list())
      else:
        queue.append((child, child_path))
  return keys


def strip_variable_suffix(key: str) -> str:
  """'a/b/.ATTRIBUTES/VARIABLE_VALUE' -> 'a/b' (as tf.train.list_variables prints keys)."""
  return key[:-len(_VARIABLE_SUFFIX)] if key.endswith(_VARIABLE_SUFFIX) else key
