"""Tests for kmax_tf/model/pixel_encoder/axial_resnet.py against DeepLab2 references.

The checkpoint-key contract of the encoders is tested together with the pixel
decoder in test_pixel_decoder.py (it covers all `encoder/` keys of the manifests).
"""

import functools

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf.keras_setup import keras
from kmax_tf.model.pixel_encoder import axial_resnet
from tests.helpers import dl2_checkpoint

# DeepLab2's solver defaults (batchnorm_momentum 0.99, batchnorm_epsilon 1e-3).
_BN = functools.partial(keras.layers.BatchNormalization, momentum=0.99, epsilon=1e-3)
_TOLERANCE = 1e-4  # max|diff| / max|ref|, the reference README's recommendation


def _encoder_manifest(dl2_reference, manifest_name):
  rows = dl2_checkpoint.read_manifest(dl2_reference / 'manifests' / f'{manifest_name}.tsv')
  return [row for row in rows if row[0].startswith('encoder/')]


@pytest.mark.parametrize('builder, stem_channels, expected_params', [
    (axial_resnet.kmax_resnet50, 64, 23_508_032),
    (axial_resnet.kmax_axial_resnet50, 128, 41_343_424),
])
def test_shapes_and_parameter_count(builder, stem_channels, expected_params):
  # DeepLab2's pixel_encoder/axial_resnet_test: 224x224 input, trainable weights only.
  model = builder(input_shape=(224, 224, 3))
  outputs = model(keras.Input(shape=(224, 224, 3)))
  widths = [stem_channels, 256, 512, 1024, 2048]
  for stage, (size, width) in enumerate(zip([112, 56, 28, 14, 7], widths), start=1):
    assert outputs[f'stage{stage}'].shape.as_list() == [None, size, size, width]
    assert outputs[f'res{stage}'].shape.as_list() == [None, size, size, width]
  assert outputs['backbone_output'].shape.as_list() == [None, 7, 7, 2048]
  assert sum(int(np.prod(v.shape)) for v in model.trainable_weights) == expected_params


def test_resnet50_matches_deeplab2_coco_reference(dl2_reference, tmp_path):
  reference = np.load(dl2_reference / 'forward' / 'coco_r50_129x129.npz')
  stats = np.load(dl2_reference / 'forward' / 'coco_r50_129x129_moving_stats.npz')
  manifest = _encoder_manifest(dl2_reference, 'coco_r50')
  values = dl2_checkpoint.manifest_values(
      manifest, overrides={k: stats[k] for k in stats.files if k.startswith('encoder/')})
  path = dl2_checkpoint.write_checkpoint(values, tmp_path / 'ckpt')
  encoder = axial_resnet.kmax_resnet50(bn_layer=_BN, input_shape=(129, 129, 3))
  tf.train.Checkpoint(encoder=encoder).read(path).assert_consumed()

  images = tf.constant(reference['input_image'] / 127.5 - 1.0, tf.float32)
  outputs = encoder(images, training=False)
  for stage in range(1, 6):
    expected = reference[f'encoder/stage{stage}']
    error = np.abs(outputs[f'stage{stage}'].numpy() - expected).max() / np.abs(expected).max()
    assert error <= _TOLERANCE, f'stage{stage}: relative error {error:.2e}'
    np.testing.assert_array_equal(outputs[f'res{stage}'], tf.nn.relu(outputs[f'stage{stage}']))
  np.testing.assert_array_equal(outputs['backbone_output'], outputs['res5'])


def test_encoders_run_under_xla():
  images = tf.random.uniform([1, 33, 49, 3], -1.0, 1.0, seed=5)
  for builder in (axial_resnet.kmax_resnet50, axial_resnet.kmax_axial_resnet50):
    encoder = builder()
    eager = encoder(images, training=False)
    compiled = tf.function(lambda x, e=encoder: e(x, training=False), jit_compile=True)(images)
    for key in ('stage1', 'stage3', 'stage5'):
      error = np.abs(compiled[key] - eager[key]).max() / np.abs(eager[key]).max()
      assert error <= _TOLERANCE, f'{builder.__name__} {key}: {error:.2e}'


def test_scaling_knobs_and_drop_path_schedule():
  encoder = axial_resnet.kmax_resnet50(
      drop_path_keep_prob=0.5, backbone_width_multiplier=0.25, backbone_layer_multiplier=0.5,
      stem_width_multiplier=0.5)
  outputs = encoder(tf.zeros([1, 64, 64, 3]), training=False)
  assert outputs['stage1'].shape == (1, 32, 32, 32)
  assert [outputs[f'stage{k}'].shape[-1] for k in range(2, 6)] == [64, 128, 256, 512]
  assert [encoder._stage2._num_blocks, encoder._stage3._num_blocks, encoder._stage4._num_blocks,
          encoder._stage5._num_blocks] == [1, 2, 3, 1]
  # Linear schedule over 4 stages: stride 16 is stage 3 (keep 0.625), stride 32 stage 4.
  assert encoder._stage3.drop_path_keep_probs == (1.0, 1.0)
  assert encoder._stage4.drop_path_keep_probs == pytest.approx((1.0, 0.625, 0.625))
  assert encoder._stage5.drop_path_keep_probs == pytest.approx((0.625,))
  with pytest.raises(ValueError, match='without blocks'):
    axial_resnet.kmax_resnet50(backbone_layer_multiplier=0.2)
  with pytest.raises(ValueError, match='input_shape'):
    axial_resnet.kmax_resnet50(input_shape=(64, 64))
