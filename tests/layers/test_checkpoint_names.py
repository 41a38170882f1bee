"""Tests for kmax_tf/layers/checkpoint_names.py."""

import pytest

from kmax_tf.keras_setup import keras
from kmax_tf.layers import checkpoint_names


def test_names():
  assert checkpoint_names.block_attribute(0) == '_block1'
  assert checkpoint_names.transformer_attribute(2) == '_block3_transformer'
  assert checkpoint_names.stacked_conv_attribute(1, True, 'gelu') == '_conv2_bn_act'
  assert checkpoint_names.stacked_conv_attribute(0, False, 'none') == '_conv1'
  assert checkpoint_names.layer_name('_conv1_bn_act') == 'conv1_bn_act'
  with pytest.raises(ValueError):
    checkpoint_names.layer_name('conv1')


def test_collisions_are_refused():
  owner = keras.layers.Layer()
  checkpoint_names.set_checkpoint_child(owner, '_block1', keras.layers.Dense(2))
  with pytest.raises(ValueError, match='_block1'):
    checkpoint_names.set_checkpoint_child(owner, '_block1', keras.layers.Dense(2))
