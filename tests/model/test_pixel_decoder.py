"""Tests for kmax_tf/model/pixel_decoder.py: checkpoint contract and DeepLab2 parity.

The parity tests restore DeepLab2's reference weights (manifest + weight rule +
calibrated moving statistics) into encoder and pixel decoder and compare every
stored `encoder/stage*` and `pixel_decoder/*` intermediate.
"""

import functools

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf.keras_setup import keras
from kmax_tf.model import pixel_decoder
from kmax_tf.model.pixel_encoder import axial_resnet
from tests.helpers import dl2_checkpoint

# DeepLab2's solver defaults (batchnorm_momentum 0.99, batchnorm_epsilon 1e-3).
_BN = functools.partial(keras.layers.BatchNormalization, momentum=0.99, epsilon=1e-3)
_TOLERANCE = 1e-4  # max|diff| / max|ref|, the reference README's recommendation
_PREFIXES = ('encoder/', 'pixel_decoder/')

# reference name -> (manifest, crop (H, W), decoder output stride)
_REFERENCES = {
    'coco_r50_129x129': ('coco_r50', (129, 129), 4),
    'cityscapes_r50_129x257': ('cityscapes_r50', (129, 257), 2),
}


def _build(encoder_builder, crop, output_stride, bn_layer=_BN):
  encoder = encoder_builder(bn_layer=bn_layer)
  decoder = pixel_decoder.kmax_pixel_decoder(output_stride, norm_layer=bn_layer)
  decoder(encoder(keras.Input(shape=(*crop, 3)), training=False), training=False)
  return encoder, decoder


def _manifest(dl2_reference, name):
  rows = dl2_checkpoint.read_manifest(dl2_reference / 'manifests' / f'{name}.tsv')
  return [row for row in rows if row[0].startswith(_PREFIXES)]


@pytest.fixture(scope='module', params=sorted(_REFERENCES))
def restored(request, dl2_reference, tmp_path_factory):
  """(reference npz, encoder, decoder) with DeepLab2's reference weights restored strictly."""
  name = request.param
  manifest_name, crop, output_stride = _REFERENCES[name]
  stats = np.load(dl2_reference / 'forward' / f'{name}_moving_stats.npz')
  values = dl2_checkpoint.manifest_values(
      _manifest(dl2_reference, manifest_name),
      overrides={k: stats[k] for k in stats.files if k.startswith(_PREFIXES)})
  path = dl2_checkpoint.write_checkpoint(values, tmp_path_factory.mktemp(name) / 'ckpt')
  encoder, decoder = _build(axial_resnet.kmax_resnet50, crop, output_stride)
  # Every checkpoint value is used and every model variable is restored.
  tf.train.Checkpoint(encoder=encoder, pixel_decoder=decoder).read(path).assert_consumed()
  return np.load(dl2_reference / 'forward' / f'{name}.npz'), encoder, decoder


def _assert_matches_reference(reference, outputs):
  compared = 0
  for key in reference.files:
    if not key.startswith(_PREFIXES):
      continue
    expected = reference[key]
    actual = outputs[key.split('/', 1)[1]].numpy()
    assert actual.shape == expected.shape, key
    error = np.abs(actual - expected).max() / np.abs(expected).max()
    assert error <= _TOLERANCE, f'{key}: relative error {error:.2e}'
    compared += 1
  assert compared >= 6


def test_matches_deeplab2_eager(restored):
  reference, encoder, decoder = restored
  images = tf.constant(reference['input_image'] / 127.5 - 1.0, tf.float32)
  _assert_matches_reference(reference, decoder(encoder(images, training=False), training=False))


def test_matches_deeplab2_under_tf_function(restored):
  reference, encoder, decoder = restored
  forward = tf.function(lambda x: decoder(encoder(x, training=False), training=False))
  images = tf.constant(reference['input_image'] / 127.5 - 1.0, tf.float32)
  _assert_matches_reference(reference, forward(images))


@pytest.mark.parametrize('manifest_name, encoder_builder, crop, output_stride', [
    ('coco_r50', axial_resnet.kmax_resnet50, (129, 129), 4),
    ('cityscapes_r50', axial_resnet.kmax_resnet50, (129, 257), 2),
    ('coco_axial_r50', axial_resnet.kmax_axial_resnet50, (129, 129), 4),
    ('cityscapes_axial_r50', axial_resnet.kmax_axial_resnet50, (129, 257), 2),
])
def test_checkpoint_keys_match_manifest(manifest_name, encoder_builder, crop, output_stride,
                                        dl2_reference, tmp_path):
  encoder, decoder = _build(encoder_builder, crop, output_stride)
  path = tf.train.Checkpoint(encoder=encoder, pixel_decoder=decoder).write(
      str(tmp_path / 'ckpt'))
  expected = {key: shape for key, shape, _ in _manifest(dl2_reference, manifest_name)}
  actual = dl2_checkpoint.checkpoint_keys(path)
  assert sorted(set(expected) - set(actual)) == []  # missing
  assert sorted(set(actual) - set(expected)) == []  # extra
  assert actual == expected  # shapes


def test_deeplab2_output_shapes():
  # DeepLab2's pixel_decoder/kmax_test: symbolic encoder endpoints of a 641x641 crop.
  decoder = pixel_decoder.KMaXPixelDecoder()
  outputs = decoder({
      'stage1': keras.Input(shape=(321, 321, 64)),
      'stage2': keras.Input(shape=(161, 161, 128)),
      'stage3': keras.Input(shape=(81, 81, 256)),
      'stage4': keras.Input(shape=(41, 41, 512)),
      'stage5': keras.Input(shape=(21, 21, 1024)),
  })
  assert outputs['decoder_stage1'].shape.as_list() == [None, 21, 21, 2048]
  assert outputs['decoder_stage2'].shape.as_list() == [None, 41, 41, 1024]
  assert outputs['decoder_stage3'].shape.as_list() == [None, 81, 81, 512]
  assert outputs['decoder_output'].shape.as_list() == [None, 161, 161, 256]
  assert 'stage1' in outputs  # the encoder endpoints are passed through


def test_training_step_reaches_every_variable():
  bn = functools.partial(keras.layers.BatchNormalization, synchronized=True, momentum=0.99,
                         epsilon=1e-3)
  encoder = axial_resnet.kmax_resnet50(bn_layer=bn, drop_path_keep_prob=0.8)
  decoder = pixel_decoder.KMaXPixelDecoder(norm_layer=bn, dims=(32, 16, 8, 8),
                                           num_blocks=(1, 2, 1, 1))
  images = tf.random.uniform([2, 33, 33, 3], -1.0, 1.0, seed=7)
  with tf.GradientTape() as tape:
    outputs = decoder(encoder(images, training=True), training=True)
    loss = tf.reduce_mean(outputs['decoder_output'] ** 2) + tf.reduce_mean(
        outputs['decoder_stage1'])
  variables = encoder.trainable_variables + decoder.trainable_variables
  gradients = tape.gradient(loss, variables)
  assert [v.name for v, g in zip(variables, gradients) if g is None] == []
  assert outputs['decoder_output'].shape == (2, 9, 9, 32)


def test_invalid_configurations():
  with pytest.raises(ValueError, match='same length'):
    pixel_decoder.KMaXPixelDecoder(dims=(8, 8, 8, 8), num_blocks=(1, 1, 1))
  with pytest.raises(ValueError, match='4 stages'):
    pixel_decoder.KMaXPixelDecoder(dims=(8,) * 3, num_blocks=(1,) * 3,
                                   block_types=('axial',) * 3)
  with pytest.raises(ValueError, match='block_types'):
    pixel_decoder.KMaXPixelDecoder(block_types=('axial', 'axial', 'conv', 'bottleneck'))
  with pytest.raises(ValueError, match='output_stride must be 4 or 2'):
    pixel_decoder.kmax_pixel_decoder(8)
  with pytest.raises(ValueError, match='stage2'):
    pixel_decoder.KMaXPixelDecoder()({f'stage{k}': tf.zeros([1, 2, 2, 8]) for k in (3, 4, 5)})
