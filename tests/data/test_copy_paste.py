"""Tests of kmax_tf.data.copy_paste (panoptic copy-paste)."""

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf.data import copy_paste
from kmax_tf.data import dataset_descriptors
from kmax_tf.data import sample_generator
from kmax_tf.protos import dataset_pb2

COCO = dataset_descriptors.get_dataset_descriptor('coco_panoptic')
DIV = 256
PADDING = 0 * DIV + 1  # COCO ignore 0 * 256 + 1


def _canvas():
  label = np.full((8, 10), 100 * DIV, np.int32)  # stuff class 100
  label[0:3, 0:3] = 3 * DIV + 1                  # thing instance 1
  label[5:8, 6:10] = 3 * DIV + 2                 # thing instance 2
  image = np.full((8, 10, 3), 10.0, np.float32)
  return image, label


def _paste():
  label = np.full((8, 10), 120 * DIV, np.int32)  # stuff class 120
  label[2:6, 2:6] = 4 * DIV + 1                  # thing instance -> 256 - 1 - 1 = 254
  label[0, :] = 0                                # void
  label[:, 9] = PADDING                          # padded column of the paste sample
  image = np.full((8, 10, 3), 200.0, np.float32)
  return image, label


def _run(thing, stuff, void, seed=0):
  image, label = _canvas()
  paste_image, paste_label = _paste()
  out_image, out_label = copy_paste.panoptic_copy_paste(
      tf.constant(image), tf.constant(label[:, :, None]), tf.constant(paste_image),
      tf.constant(paste_label[:, :, None]), descriptor=COCO, thing_option=thing,
      stuff_option=stuff, void_option=void, paste_padding_value=PADDING,
      seed=tf.constant([seed, 9]))
  return out_image.numpy(), out_label.numpy()[:, :, 0]


def test_things_only():
  image, label = _run('all', 'none', 'none')
  canvas_image, canvas_label = _canvas()
  _, paste_label = _paste()
  pasted = paste_label == 4 * DIV + 1
  np.testing.assert_array_equal(label[pasted], 4 * DIV + 254)  # instance id inverted
  np.testing.assert_array_equal(label[~pasted], canvas_label[~pasted])
  # Pixels follow labels: pasted pixels come from the paste image.
  assert np.all(image[pasted] == 200.0) and np.all(image[~pasted] == 10.0)
  # Instance ids stay unique: canvas instances below 128, pasted ones above.
  assert set(np.unique(label[label // DIV == 3] % DIV)) == {1, 2}


def test_everything_pasted_except_padding():
  image, label = _run('all', 'all', 'all')
  canvas_image, canvas_label = _canvas()
  _, paste_label = _paste()
  np.testing.assert_array_equal(label[:, 9], canvas_label[:, 9])  # padding never pasted
  assert np.all(image[:, 9] == 10.0)
  expected = np.where(paste_label // DIV == 4, 4 * DIV + 254, paste_label)[:, :9]
  np.testing.assert_array_equal(label[:, :9], expected)
  assert np.all(label[0, :9] == 0)  # void pasted stays void (ignore)
  assert np.all(image[:, :9] == 200.0)


def test_nothing_pasted():
  image, label = _run('none', 'none', 'none')
  canvas_image, canvas_label = _canvas()
  np.testing.assert_array_equal(label, canvas_label)
  np.testing.assert_array_equal(image, canvas_image)


def test_random_option_pastes_whole_segments_and_varies():
  _, paste_label = _paste()
  _, canvas_label = _canvas()
  instance = paste_label % DIV
  transformed = np.where(instance != 0, (paste_label // DIV) * DIV + 255 - instance, paste_label)
  outcomes = set()
  for seed in range(20):
    image, label = _run('random', 'random', 'random', seed)
    pasted = image[:, :, 0] == 200.0
    # Each paste segment is pasted whole or not at all; padding never.
    for segment in np.unique(paste_label):
      in_segment = paste_label == segment
      assert pasted[in_segment].all() or not pasted[in_segment].any()
    assert not pasted[:, 9].any()
    np.testing.assert_array_equal(label[pasted], transformed[pasted])
    np.testing.assert_array_equal(label[~pasted], canvas_label[~pasted])
    outcomes.add(tuple(np.unique(label)))
  assert len(outcomes) > 3


def test_instance_ids_must_stay_below_half_divisor():
  image, label = _canvas()
  label[0, 0] = 3 * DIV + 200
  paste_image, paste_label = _paste()
  with pytest.raises(tf.errors.InvalidArgumentError, match='label_divisor // 2'):
    copy_paste.panoptic_copy_paste(
        tf.constant(image), tf.constant(label[:, :, None]), tf.constant(paste_image),
        tf.constant(paste_label[:, :, None]), descriptor=COCO, thing_option='all',
        stuff_option='none', void_option='none', paste_padding_value=PADDING,
        seed=tf.constant([0, 0]))


def test_unknown_option_is_rejected():
  with pytest.raises(ValueError, match='Unknown panoptic copy-paste option'):
    _run('some', 'none', 'none')
  options = dataset_pb2.DatasetOptions.PanopticCopyPasteOptions(
      panoptic_copy_paste_scale=1.0, panoptic_copy_paste_thing_option='every')
  with pytest.raises(ValueError, match='every'):
    sample_generator.PanopticSampleGenerator(COCO, is_training=True, crop_size=[8, 8],
                                             copy_paste_options=options)


def test_stuff_ids_exclude_things_and_void():
  assert copy_paste.stuff_class_ids(6, [1, 2], 0) == [3, 4, 5]
  assert copy_paste.stuff_class_ids(4, [1], 255) == [0, 2, 3]


def test_generator_applies_copy_paste_in_training():
  options = dataset_pb2.DatasetOptions.PanopticCopyPasteOptions(
      panoptic_copy_paste_scale=1.0, panoptic_copy_paste_thing_option='all',
      panoptic_copy_paste_stuff_option='none', panoptic_copy_paste_void_option='none')
  generator = sample_generator.PanopticSampleGenerator(
      COCO, is_training=True, crop_size=[8, 10], thing_id_mask_annotations=True,
      copy_paste_options=options)
  image, label = _canvas()
  paste_image, paste_label = _paste()
  paste_label[:, 9] = 120 * DIV  # a real paste sample has no padding before preprocessing

  def decoded(img, lab):
    return {'image': tf.constant(img.astype(np.uint8)), 'image_name': tf.constant('c'),
            'height': 8, 'width': 10, 'label': tf.constant(lab[:, :, None])}

  sample = generator(decoded(image, label), decoded(paste_image, paste_label),
                     seed=tf.constant([1, 2]))
  panoptic = sample['panoptic_gt'].numpy()
  assert (panoptic == 4 * DIV + 254).sum() == 16  # the whole 4x4 pasted thing
  assert np.all(sample['image'].numpy()[panoptic == 4 * DIV + 254] == 200.0)
  # The pasted instance is a thing with its own thing id.
  classes = sample['thing_id_class_gt'].numpy()
  assert 4.0 in classes.tolist()
  with pytest.raises(ValueError, match='paste'):
    generator(decoded(image, label), seed=tf.constant([1, 2]))


def test_copy_paste_scale_shrinks_the_paste_sample():
  options = dataset_pb2.DatasetOptions.PanopticCopyPasteOptions(
      panoptic_copy_paste_scale=0.5, panoptic_copy_paste_thing_option='all',
      panoptic_copy_paste_stuff_option='all', panoptic_copy_paste_void_option='all')
  generator = sample_generator.PanopticSampleGenerator(
      COCO, is_training=True, crop_size=[8, 10], copy_paste_options=options)
  canvas = {'image': tf.fill([8, 10, 3], tf.constant(10, tf.uint8)),
            'image_name': tf.constant('c'), 'height': 8, 'width': 10,
            'label': tf.fill([8, 10, 1], 100 * DIV)}
  paste = dict(canvas, image=tf.fill([8, 10, 3], tf.constant(200, tf.uint8)),
               label=tf.fill([8, 10, 1], 4 * DIV + 1))
  for seed in range(3):
    sample = generator(canvas, paste, seed=tf.constant([seed, 0]))
    pasted = sample['panoptic_gt'].numpy() == 4 * DIV + 254
    # Scale 1 x 0.5: the paste sample is 4x5 plus padding, and padding is never pasted.
    assert pasted.sum() == 4 * 5
    assert np.all(sample['image'].numpy()[pasted] == 200.0)
    assert np.all(sample['image'].numpy()[~pasted] == 10.0)
