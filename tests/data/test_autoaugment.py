"""Tests of kmax_tf.data.autoaugment."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from PIL import ImageOps

from kmax_tf.data import autoaugment


@pytest.fixture(scope='module')
def photo():
  rng = np.random.default_rng(4)
  # Smooth gradients plus noise, restricted range so autocontrast/equalize act.
  ys, xs = np.mgrid[0:24, 0:32]
  base = np.stack([ys * 4 + 30, xs * 3 + 40, (ys + xs) * 2 + 20], axis=-1)
  return np.clip(base + rng.integers(-10, 10, base.shape), 0, 255).astype(np.uint8)


def test_policies_as_deeplab2_defines_them():
  expected = [
      [('Sharpness', 0.4, 7), ('Brightness', 0.2, 10)],
      [('Equalize', 0.0, 9), ('Contrast', 0.2, 10)],
      [('Sharpness', 0.2, 9), ('Color', 0.2, 9)],
      [('Solarize', 0.2, 7), ('Equalize', 0.6, 9)],
      [('Sharpness', 0.2, 1), ('Equalize', 0.2, 7)],
  ]
  assert autoaugment.POLICIES['simple_classification_policy'] == expected
  scaled = autoaugment.POLICIES['simple_classification_policy_magnitude_scale_0.2']
  for sub_policy, expected_sub_policy in zip(scaled, expected):
    for (name, prob, level), (e_name, e_prob, e_level) in zip(sub_policy, expected_sub_policy):
      assert (name, prob) == (e_name, e_prob)
      assert level == pytest.approx(e_level * 0.2)


def test_operations_match_pil(photo):
  pil = Image.fromarray(photo)
  tf_image = tf.constant(photo)
  np.testing.assert_array_equal(autoaugment.invert(tf_image), np.asarray(ImageOps.invert(pil)))
  np.testing.assert_array_equal(autoaugment.solarize(tf_image, 100),
                                np.asarray(ImageOps.solarize(pil, 100)))
  np.testing.assert_array_equal(autoaugment.posterize(tf_image, 3),
                                np.asarray(ImageOps.posterize(pil, 3)))
  np.testing.assert_array_equal(autoaugment.equalize(tf_image), np.asarray(ImageOps.equalize(pil)))
  diff = (autoaugment.autocontrast(tf_image).numpy().astype(int) -
          np.asarray(ImageOps.autocontrast(pil)).astype(int))
  assert np.abs(diff).max() <= 1
  stretched = autoaugment.autocontrast(tf_image).numpy()
  assert stretched.reshape(-1, 3).min(axis=0).tolist() == [0, 0, 0]
  # float32 truncation (as in DeepLab2) may leave the maximum at 254.
  assert all(value >= 254 for value in stretched.reshape(-1, 3).max(axis=0))


def test_blend_truncates_and_clips():
  image = tf.constant([[[201, 100, 0]]], tf.uint8)
  assert autoaugment.brightness(image, 0.5).numpy().tolist() == [[[100, 50, 0]]]
  assert autoaugment.brightness(image, 1.9).numpy().tolist() == [[[255, 190, 0]]]
  assert autoaugment.brightness(image, 1.0).numpy().tolist() == [[[201, 100, 0]]]


def test_contrast_uses_deeplab2_constant():
  # DeepLab2 blends with pixel_count / 256, which is 0 for a 4x4 image, so
  # contrast acts like brightness here.
  image = tf.constant(np.arange(48).reshape(4, 4, 3) * 5, tf.uint8)
  np.testing.assert_array_equal(autoaugment.contrast(image, 0.5),
                                autoaugment.brightness(image, 0.5))


def test_sharpness_keeps_borders_and_flat_regions(photo):
  flat = tf.fill([8, 8, 3], tf.constant(77, tf.uint8))
  np.testing.assert_array_equal(autoaugment.sharpness(flat, 1.9), flat)
  sharpened = autoaugment.sharpness(tf.constant(photo), 0.1).numpy()
  np.testing.assert_array_equal(sharpened[0], photo[0])
  np.testing.assert_array_equal(sharpened[:, -1], photo[:, -1])
  assert not np.array_equal(sharpened[1:-1, 1:-1], photo[1:-1, 1:-1])


def test_color_zero_is_greyscale(photo):
  grey = autoaugment.color(tf.constant(photo), 0.0).numpy()
  assert np.all(grey[..., 0] == grey[..., 1]) and np.all(grey[..., 1] == grey[..., 2])


def test_distort_image_is_seeded_and_varies(photo):
  policy = 'simple_classification_policy'
  outputs = [autoaugment.distort_image(tf.constant(photo), policy, tf.constant([s, 1])).numpy()
             for s in range(16)]
  again = autoaugment.distort_image(tf.constant(photo), policy, tf.constant([3, 1])).numpy()
  np.testing.assert_array_equal(outputs[3], again)
  unchanged = sum(np.array_equal(output, photo) for output in outputs)
  # Every operation has probability < 1, so some images pass through, most do not.
  assert 0 < unchanged < len(outputs)
  assert all(output.dtype == np.uint8 and output.shape == photo.shape for output in outputs)


def test_distort_image_rejects_bad_input(photo):
  with pytest.raises(ValueError, match='Unknown autoaugment_policy_name'):
    autoaugment.distort_image(tf.constant(photo), 'rand_augment', tf.constant([0, 0]))
  with pytest.raises(ValueError, match='uint8'):
    autoaugment.distort_image(tf.constant(photo, tf.float32), 'simple_classification_policy',
                              tf.constant([0, 0]))
