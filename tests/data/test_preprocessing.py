"""Tests of kmax_tf.data.preprocessing (resize/pad/crop/flip/scale)."""

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf.data import preprocessing

PAD_ID = 0  # COCO: ignore_label 0 * divisor 256


@pytest.mark.parametrize('size, min_size, max_size, factor, expected', [
    ((143, 196), 257, 257, None, (187, 257)),   # the reference eval sample 0
    ((174, 175), 257, 257, None, (256, 257)),   # the reference eval sample 1
    ((50, 100), 100, None, None, (100, 200)),   # min only: upscale so the short side is 100
    ((300, 400), None, (200, 200), None, (150, 200)),
    ((50, 60), None, (200, 200), None, (50, 60)),  # max never enlarges
    ((100, 200), None, 65, 4, (33, 65)),        # sides made 4k + 1
])
def test_resize_to_range_size(size, min_size, max_size, factor, expected):
  result = preprocessing.resize_to_range_size(size[0], size[1], min_size, max_size, factor)
  assert tuple(result.numpy()) == expected


def test_max_resize_value_checks():
  assert preprocessing.check_max_resize_value(None, (65, 97), is_training=False) == (65, 97)
  assert preprocessing.check_max_resize_value(None, (65, 97), is_training=True) is None
  with pytest.raises(ValueError, match='exceeds crop_size'):
    preprocessing.check_max_resize_value([129], (65, 97), is_training=True)


def _colour_table(num_ids):
  rng = np.random.default_rng(0)
  return rng.integers(0, 256, size=(num_ids, 3)).astype(np.float32)


def _block_sample(height=20, width=28):
  """A label of 4x4 blocks with ids 1.. and an image whose colour encodes the id."""
  ids = (np.arange(height)[:, None] // 4) * 100 + (np.arange(width)[None, :] // 4) + 1
  unique, label = np.unique(ids, return_inverse=True)
  label = label.reshape(height, width).astype(np.int32) + 1  # ids 1..N, 0 = padding
  colours = _colour_table(len(unique) + 1)
  return colours[label].astype(np.uint8), label, colours


def _preprocess(image, label, seed, crop=(24, 16), **kwargs):
  resized, out_image, out_label = preprocessing.preprocess_image_and_label(
      tf.constant(image), tf.constant(label[:, :, None]), crop, label_pad_value=PAD_ID,
      is_training=True, seeds=preprocessing.SeedStream(tf.constant([seed, 5])), **kwargs)
  return resized.numpy(), out_image.numpy(), out_label.numpy()[:, :, 0]


def test_training_crop_pad_flip_keep_labels_aligned():
  image, label, colours = _block_sample()
  flipped_seen = set()
  offsets_seen = set()
  for seed in range(12):
    _, out_image, out_label = _preprocess(image, label, seed)
    assert out_image.shape == (24, 16, 3) and out_label.shape == (24, 16)
    padded = out_label == PAD_ID
    # Height 20 < 24: 4 padded rows in total; width 28 > 16: cropped, no padded columns.
    assert padded.sum() == 4 * 16
    assert np.all(out_image[padded] == 127.5)
    np.testing.assert_array_equal(out_image[~padded], colours[out_label[~padded]])
    # Orientation: block ids increase left to right unless flipped.
    row = out_label[~padded.any(axis=1)][0]
    flipped_seen.add(bool(row[0] > row[-1]))
    offsets_seen.add((int(np.argmax(~padded[:, 0])), int(row[0])))
  assert flipped_seen == {True, False}
  assert len(offsets_seen) > 3


def test_same_seed_same_sample_different_seed_differs():
  image, label, _ = _block_sample()
  options = dict(min_scale_factor=0.5, max_scale_factor=2.0, scale_factor_step_size=0.25)
  first = _preprocess(image, label, 3, **options)
  again = _preprocess(image, label, 3, **options)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  others = [_preprocess(image, label, seed, **options)[2] for seed in range(4, 8)]
  assert any(not np.array_equal(first[2], other) for other in others)


def test_random_scale_resizes_image_and_label_together():
  image, label, colours = _block_sample(16, 16)
  _, out_image, out_label = _preprocess(image, label, 0, crop=(40, 40), min_scale_factor=2.0,
                                        max_scale_factor=2.0)
  content = out_label != PAD_ID
  # floor(16 * 2) = 32 rows and columns of content, at a random offset.
  assert content.sum() == 32 * 32
  assert set(np.unique(out_label[content])) == set(np.unique(label))
  # Away from block borders the bilinear image matches the nearest-resized label.
  interior = content.copy()
  for dy in (-2, -1, 1, 2):
    interior[2:-2] &= np.roll(out_label, dy, axis=0)[2:-2] == out_label[2:-2]
  for dx in (-2, -1, 1, 2):
    interior[:, 2:-2] &= np.roll(out_label, dx, axis=1)[:, 2:-2] == out_label[:, 2:-2]
  assert interior.sum() > 100
  np.testing.assert_allclose(out_image[interior], colours[out_label[interior]], atol=1e-3)


def test_random_scale_factor_values():
  seeds = [tf.constant([s, 0]) for s in range(40)]
  stepped = {round(float(preprocessing.random_scale_factor(0.5, 2.0, 0.25, s)), 4)
             for s in seeds}
  assert stepped <= {0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0}
  assert len(stepped) >= 5
  uniform = [float(preprocessing.random_scale_factor(0.5, 2.0, 0.0, s)) for s in seeds]
  assert all(0.5 <= value < 2.0 for value in uniform) and len(set(uniform)) == 40
  assert float(preprocessing.random_scale_factor(1.5, 1.5, 0.25, seeds[0])) == 1.5
  with pytest.raises(ValueError, match='Invalid scale range'):
    preprocessing.random_scale_factor(2.0, 1.0, 0.0, seeds[0])


def test_autoaugment_changes_pixels_not_labels():
  image, label, _ = _block_sample()
  policy = 'simple_classification_policy'
  changed = 0
  for seed in range(6):
    plain = _preprocess(image, label, seed)
    augmented = _preprocess(image, label, seed, autoaugment_policy_name=policy)
    np.testing.assert_array_equal(plain[2], augmented[2])
    padded = plain[2] == PAD_ID
    assert np.all(augmented[1][padded] == 127.5)
    changed += int(not np.array_equal(plain[1], augmented[1]))
  assert changed >= 1


def test_eval_mode_resizes_then_pads_bottom_right():
  image = np.full((10, 20, 3), 50, np.uint8)
  label = np.full((10, 20, 1), 7, np.int32)
  resized, out_image, out_label = preprocessing.preprocess_image_and_label(
      tf.constant(image), tf.constant(label), (13, 13), label_pad_value=PAD_ID,
      is_training=False)
  assert resized.shape == (6, 13, 3)  # fits max = crop: floor(10 * 0.65), 13
  assert np.all(out_image.numpy()[:6] == 50) and np.all(out_image.numpy()[6:] == 127.5)
  assert np.all(out_label.numpy()[:6] == 7) and np.all(out_label.numpy()[6:] == PAD_ID)
