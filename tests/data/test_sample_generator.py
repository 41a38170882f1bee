"""Tests of kmax_tf.data.sample_generator."""

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf import common
from kmax_tf.data import dataset_descriptors
from kmax_tf.data import sample_generator
from kmax_tf.data import tfrecord_decoder

COCO = dataset_descriptors.get_dataset_descriptor('coco_panoptic')


@pytest.fixture(scope='module')
def reference_samples(dl2_reference):
  """Our eval samples for the reference val records (DeepLab2's R50 COCO eval options)."""
  generator = sample_generator.PanopticSampleGenerator(
      COCO, is_training=False, crop_size=[257, 257], min_resize_value=[257, 257],
      max_resize_value=[257, 257], thing_id_mask_annotations=True, max_thing_id=128)
  decoder = tfrecord_decoder.TFRecordDecoder(COCO)
  files = sorted(tf.io.gfile.glob(str(dl2_reference / 'data' / 'tfrecord' / 'val-*')))
  dataset = tf.data.TFRecordDataset(files).map(lambda record: generator(decoder(record)))
  return [{k: v.numpy() for k, v in sample.items()} for sample in dataset]


def test_eval_samples_equal_deeplab2(reference_samples, dl2_reference):
  reference = np.load(dl2_reference / 'data' / 'coco_val_eval_samples_257.npz')
  assert len(reference_samples) == 2
  for i, sample in enumerate(reference_samples):
    expected_keys = {k.split('/', 1)[1] for k in reference.files if k.startswith(f'sample{i}/')}
    assert set(sample) == expected_keys
    for key, value in sample.items():
      expected = reference[f'sample{i}/{key}'][0]  # the reference has batch dim 1
      if key == common.IMAGE_NAME:
        assert value.decode() == str(expected)
        continue
      assert value.shape == expected.shape, key
      assert value.dtype == expected.dtype, key
      if key in (common.IMAGE, common.RESIZED_IMAGE):
        # Bitwise equal here; the README allows JPEG-decoder drift on other builds.
        np.testing.assert_allclose(value, expected, atol=3.0, err_msg=key)
      else:
        np.testing.assert_array_equal(value, expected, err_msg=key)


def test_eval_images_bitwise_equal_from_same_decoded_pixels(reference_samples, dl2_reference):
  reference = np.load(dl2_reference / 'data' / 'coco_val_eval_samples_257.npz')
  generator = sample_generator.PanopticSampleGenerator(
      COCO, is_training=False, crop_size=[257, 257], min_resize_value=[257, 257],
      max_resize_value=[257, 257])
  for i in range(2):
    decoded_image = reference[f'tfrecord{i}/image_decoded_uint8_tf']
    decoded = {'image': tf.constant(decoded_image), 'image_name': tf.constant('x'),
               'height': decoded_image.shape[0], 'width': decoded_image.shape[1]}
    sample = generator(decoded)
    np.testing.assert_array_equal(sample['image'].numpy(), reference[f'sample{i}/image'][0])
    np.testing.assert_array_equal(sample['resized_image'].numpy(),
                                  reference[f'sample{i}/resized_image'][0])
    # 143x196 -> 187x257: padded at the bottom with 127.5.
    assert np.all(reference[f'sample{i}/image'][0, sample['resized_image'].shape[0]:] == 127.5)


def _eval_sample(panoptic, descriptor=COCO, **kwargs):
  height, width = panoptic.shape
  generator = sample_generator.PanopticSampleGenerator(
      descriptor, is_training=False, crop_size=[height, width], **kwargs)
  decoded = {'image': tf.zeros([height, width, 3], tf.uint8),
             'image_name': tf.constant('hand_made_7'), 'height': height, 'width': width,
             'label': tf.constant(panoptic[:, :, np.newaxis], tf.int32)}
  return {k: v.numpy() for k, v in generator(decoded).items()}


def _hand_made_label():
  # 12 x 16: stuff background (class 100), two thing instances of classes 5 and
  # 7, a crowd region of class 1 (instance 0) and void (0).
  panoptic = np.full((12, 16), 100 * 256, np.int32)
  panoptic[1:4, 1:4] = 7 * 256 + 2   # 9 px, appears first
  panoptic[5:11, 8:15] = 5 * 256 + 1  # 42 px
  panoptic[8:12, 0:3] = 1 * 256      # crowd
  panoptic[0, 10:] = 0               # void
  return panoptic


def test_targets_on_hand_made_label():
  panoptic = _hand_made_label()
  sample = _eval_sample(panoptic, thing_id_mask_annotations=True, max_thing_id=4,
                        small_instance_threshold=10, small_instance_weight=3.0)
  crowd = panoptic == 256
  np.testing.assert_array_equal(sample['semantic_gt'], panoptic // 256)
  np.testing.assert_array_equal(sample['panoptic_gt'], panoptic)  # crowd kept
  np.testing.assert_array_equal(sample['is_crowd_gt'], crowd)
  np.testing.assert_array_equal(sample['center_loss_weight'], (~crowd & (panoptic != 0)) * 1.0)
  things = (panoptic == 7 * 256 + 2) | (panoptic == 5 * 256 + 1)
  np.testing.assert_array_equal(sample['regression_loss_weight'], things * 1.0)
  # Small-instance weighting: only the 9-pixel instance is below 10 pixels.
  np.testing.assert_array_equal(sample['semantic_loss_weight'],
                                np.where(panoptic == 7 * 256 + 2, 3.0, 1.0))
  # Thing ids follow first appearance in row-major order.
  expected_mask = np.full(panoptic.shape, -1)
  expected_mask[panoptic == 7 * 256 + 2] = 0
  expected_mask[panoptic == 5 * 256 + 1] = 1
  np.testing.assert_array_equal(sample['thing_id_mask_gt'], expected_mask)
  np.testing.assert_array_equal(sample['thing_id_class_gt'], [7, 5, -1, -1])
  # Centres (2, 2) and (round(7.5) = 8 half-to-even, 11): offsets point there, heatmap is 1.
  offsets = sample['instance_regression_gt']
  assert offsets[1, 1].tolist() == [1, 1]
  assert offsets[10, 14].tolist() == [8 - 10, 11 - 14]
  assert np.all(offsets[~things] == 0)
  center = sample['instance_center_gt']
  assert center[2, 2] == 1.0 and center[8, 11] == 1.0
  np.testing.assert_allclose(center[2, 5], np.exp(-9 / 128), rtol=1e-6)  # sigma 8
  assert center.max() == 1.0
  # Raw keys are the unresized record.
  np.testing.assert_array_equal(sample['panoptic_raw'], panoptic)
  np.testing.assert_array_equal(sample['is_crowd_raw'], crowd)
  assert sample['size_raw'].tolist() == [12, 16]


def test_only_semantic_annotations():
  sample = _eval_sample(_hand_made_label(), only_semantic_annotations=True)
  assert 'panoptic_gt' not in sample and 'instance_center_gt' not in sample
  assert 'panoptic_raw' not in sample
  assert {'image', 'semantic_gt', 'semantic_loss_weight', 'is_crowd_gt',
          'semantic_raw'} <= set(sample)


def test_stuff_with_instance_id_is_an_error():
  panoptic = _hand_made_label()
  panoptic[0, 0] = 100 * 256 + 3  # class 100 is stuff in COCO
  with pytest.raises(tf.errors.InvalidArgumentError, match='(?s)hand_made_7.*25603'):
    _eval_sample(panoptic, thing_id_mask_annotations=True)


def test_too_many_things_is_an_error():
  with pytest.raises(tf.errors.InvalidArgumentError, match='(?s)hand_made_7.*max_thing_id'):
    _eval_sample(_hand_made_label(), thing_id_mask_annotations=True, max_thing_id=1)


def test_constants_come_from_the_descriptor():
  cityscapes = dataset_descriptors.get_dataset_descriptor('cityscapes_panoptic')
  panoptic = np.full((6, 6), 255 * 1000, np.int32)  # void
  panoptic[:3, :3] = 11 * 1000 + 1  # person instance
  panoptic[3:, 3:] = 0 * 1000       # road (stuff, class 0)
  sample = _eval_sample(panoptic, descriptor=cityscapes, thing_id_mask_annotations=True)
  np.testing.assert_array_equal(sample['semantic_gt'], panoptic // 1000)
  np.testing.assert_array_equal(sample['center_loss_weight'], (panoptic != 255000) * 1.0)
  assert sample['thing_id_class_gt'][:2].tolist() == [11, -1]


def test_eval_pads_label_with_ignore_times_divisor():
  panoptic = _hand_made_label()
  generator = sample_generator.PanopticSampleGenerator(COCO, is_training=False,
                                                       crop_size=[17, 20])
  decoded = {'image': tf.fill([12, 16, 3], tf.constant(9, tf.uint8)),
             'image_name': tf.constant('x'), 'height': 12, 'width': 16,
             'label': tf.constant(panoptic[:, :, np.newaxis])}
  sample = generator(decoded)
  np.testing.assert_array_equal(sample['panoptic_gt'][:12, :16], panoptic)
  assert np.all(sample['panoptic_gt'].numpy()[12:] == 0)
  assert np.all(sample['image'].numpy()[:, 16:] == 127.5)
  assert np.all(sample['image'].numpy()[:12, :16] == 9.0)


def test_invalid_options_are_rejected():
  with pytest.raises(ValueError, match='exceeds crop_size'):
    sample_generator.PanopticSampleGenerator(COCO, is_training=False, crop_size=[65, 65],
                                             max_resize_value=[129, 129])
  with pytest.raises(ValueError, match='crop_size'):
    sample_generator.PanopticSampleGenerator(COCO, is_training=True, crop_size=[65])
  with pytest.raises(ValueError, match='autoaugment_policy_name'):
    sample_generator.PanopticSampleGenerator(COCO, is_training=True, crop_size=[65, 65],
                                             autoaugment_policy_name='simple_policy')


def test_eval_without_labels_gives_image_keys_only():
  generator = sample_generator.PanopticSampleGenerator(COCO, is_training=False,
                                                       crop_size=[9, 9])
  decoded = {'image': tf.zeros([5, 7, 3], tf.uint8), 'image_name': tf.constant('no_label'),
             'height': 5, 'width': 7}
  sample = generator(decoded)
  assert set(sample) == {'image', 'resized_image', 'image_name', 'size_raw'}
  assert sample['image'].shape == (9, 9, 3)
  with pytest.raises(ValueError, match='needs a label'):
    sample_generator.PanopticSampleGenerator(COCO, is_training=True, crop_size=[9, 9])(
        decoded)
