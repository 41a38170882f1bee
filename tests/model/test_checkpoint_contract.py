"""DeepLab2 checkpoint naming contract: root children and variable keys."""

import functools
import json

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format

from kmax_tf.keras_setup import keras
from kmax_tf.model import builder
from kmax_tf.model import checkpoint_contract
from kmax_tf.model import prediction_head
from kmax_tf.protos import config_pb2
from tests.helpers import dl2_checkpoint

_BN = functools.partial(keras.layers.BatchNormalization)


def test_root_children_follow_deeplab2():
  assert checkpoint_contract.root_children(use_semantic_decoder=True) == (
      'encoder', 'pixel_decoder', 'transformer_decoder', 'pixel_space_head',
      'transformer_mask_head', 'transformer_class_head', 'pixel_space_feature_batch_norm',
      'pixel_space_mask_batch_norm', 'semantic_decoder', 'semantic_head_without_last_layer',
      'semantic_last_layer')
  cityscapes = checkpoint_contract.root_children(use_semantic_decoder=False)
  assert 'semantic_decoder' not in cityscapes and len(cityscapes) == 10


def test_manifests_have_exactly_the_contract_roots(dl2_reference):
  for name, has_decoder in (('coco_r50', True), ('cityscapes_r50', False),
                            ('ade20k_r50_res641', True), ('coco_convnext_tiny', True)):
    manifest = dl2_checkpoint.read_manifest(dl2_reference / 'manifests' / f'{name}.tsv')
    roots = {key.split('/')[0] for key, _, _ in manifest}
    assert roots == set(checkpoint_contract.root_children(has_decoder)), name


def test_checkpoint_items_rejects_a_wrong_root():
  head = prediction_head.KMaXPredictionHead(19, 255, bn_layer=_BN)
  items = dict(head.checkpoint_items)
  items['semantic_head'] = items.pop('semantic_last_layer')
  with pytest.raises(ValueError, match='DeepLab2 contract'):
    checkpoint_contract.checkpoint_items(keras.layers.Dense(1), keras.layers.Dense(1),
                                         keras.layers.Dense(1), items)


def test_variable_keys_equal_a_written_checkpoint(tmp_path):
  head = prediction_head.KMaXPredictionHead(
      19, 255, pixel_space_head_channels=16, pixel_space_feature_channels=8,
      semantic_head_channels=8, bn_layer=_BN)
  head({'feature_panoptic': tf.zeros([1, 9, 9, 4]), 'feature_semantic': tf.zeros([1, 9, 9, 4]),
        'transformer_class_feature': tf.zeros([1, 3, 16]),
        'transformer_mask_feature': tf.zeros([1, 3, 16])})
  items = head.checkpoint_items
  path = tf.train.Checkpoint(**items).write(str(tmp_path / 'ckpt'))
  assert checkpoint_contract.checkpoint_variable_keys(items) == dl2_checkpoint.checkpoint_keys(path)
  assert 'pixel_space_head/conv_block/_conv1_bn_act/_depthwise/_depthwise_conv/depthwise_kernel' \
      in dl2_checkpoint.checkpoint_keys(path)
  assert checkpoint_contract.strip_variable_suffix('a/b/.ATTRIBUTES/VARIABLE_VALUE') == 'a/b'


@pytest.mark.slow
def test_coco_convnext_base_keys_and_golden_count(dl2_reference):
  info = json.loads((dl2_reference / 'forward' / 'coco_r50_129x129.json').read_text())
  config = text_format.Parse(info['config_textproto'], config_pb2.ExperimentOptions())
  config.model_options.backbone.name = 'kmax_convnext_base'
  model = builder.build_model(config)
  items = model.checkpoint_items
  manifest = dl2_checkpoint.read_manifest(
      dl2_reference / 'manifests' / 'coco_convnext_base.tsv')
  assert checkpoint_contract.checkpoint_variable_keys(items) == {
      key: shape for key, shape, _ in manifest}

  def count(variables):
    return sum(int(np.prod(v.shape)) for v in variables)

  total = count(model.trainable_variables)
  assert total == 129_747_390
  semantic = sum(count(items[name].trainable_variables) for name in items
                 if name.startswith('semantic_'))
  # The published model size leaves out the auxiliary semantic branch.
  assert total - semantic == 121_513_304
