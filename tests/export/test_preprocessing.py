"""In-graph serving preprocessing equals the evaluation pipeline's."""

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf.data import preprocessing as data_preprocessing
from kmax_tf.export import preprocessing


def test_resize_spec_defaults_and_errors():
  spec = preprocessing.ResizeSpec(crop_size=(129, 161))
  assert spec.max_resize_value == (129, 161)  # Evaluation's default: the crop.
  assert spec.min_resize_value is None and spec.resize_factor is None
  spec = preprocessing.ResizeSpec(crop_size=[65, 65], min_resize_value=[65],
                                  max_resize_value=[65, 65], resize_factor=32)
  assert spec.min_resize_value == (65, 65) and spec.resize_factor == 32
  with pytest.raises(ValueError, match='exceeds crop_size'):
    preprocessing.ResizeSpec(crop_size=(65, 65), max_resize_value=(129, 129))
  with pytest.raises(ValueError, match='crop_size'):
    preprocessing.ResizeSpec(crop_size=())


@pytest.mark.parametrize('size', [(40, 90), (300, 200), (129, 129)])
def test_batch_preprocessing_matches_eval_pipeline_bitwise(size):
  spec = preprocessing.ResizeSpec(crop_size=(129, 129), min_resize_value=(129, 129))
  images = np.random.default_rng(1).integers(0, 256, (2,) + size + (3,), dtype=np.uint8)
  batch = preprocessing.preprocess_batch(tf.constant(images), spec).numpy()
  for index in range(2):
    resized, padded, _ = data_preprocessing.preprocess_image_and_label(
        tf.constant(images[index]), None, (129, 129), label_pad_value=0, is_training=False,
        min_resize_value=(129, 129))
    np.testing.assert_array_equal(batch[index], padded.numpy())
    np.testing.assert_array_equal(
        preprocessing.resized_size(tf.constant(size), spec).numpy(), resized.shape[:2])
  # Long side 129 (aspect kept), padded with 127.5.
  scale = 129 / max(size)
  expected = [int(np.floor(side * scale)) for side in size]
  assert list(preprocessing.resized_size(tf.constant(size), spec).numpy()) == expected
  assert np.all(batch[:, expected[0]:, :] == 127.5)


def test_undo_preprocessing_with_tensor_sizes():
  maps = tf.constant(np.arange(2 * 9 * 9, dtype=np.int32).reshape(2, 9, 9))
  resized, raw = tf.constant([5, 7]), tf.constant([11, 13])
  # Hand check: align-corners nearest maps output corners to input corners.
  restored = data_preprocessing.undo_preprocessing(maps, resized, raw).numpy()
  assert restored.shape == (2, 11, 13)
  assert restored[0, 0, 0] == 0 and restored[0, -1, -1] == maps[0, 4, 6]
  scores = tf.constant(np.linspace(0, 1, 81, dtype=np.float32).reshape(1, 9, 9))
  assert data_preprocessing.undo_preprocessing(scores, resized, raw).dtype == tf.float32


def test_pad_to_size():
  padded = preprocessing.pad_to_size(tf.ones([2, 3], tf.int32), tf.constant([3, 4])).numpy()
  np.testing.assert_array_equal(padded, [[1, 1, 1, -1], [1, 1, 1, -1], [-1, -1, -1, -1]])
