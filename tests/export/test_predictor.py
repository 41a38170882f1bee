"""Predictor: one image from a SavedModel or a checkpoint, segments, bad inputs."""

import numpy as np
import pytest
import tensorflow as tf

import kmax_tf
from kmax_tf import common
from kmax_tf.export import predictor as predictor_lib
from kmax_tf.export import serving
from tests.export import conftest

METADATA = {
    'format': serving.METADATA_FORMAT, 'num_classes': 4, 'ignore_label': 0,
    'panoptic_label_divisor': 256, 'class_names': ['void', 'person', 'car', 'grass'],
    'colormap': [[0, 0, 0]] * 4, 'thing_class_ids': [1, 2], 'dataset_category_ids': [0, 1, 3, 7],
}


def test_segments_from_maps_hand_checked():
  panoptic = np.array([[0, 257, 257], [1792, 257, 258], [1792, 1792, 258]])
  panoptic[panoptic == 1792] = 3 * 256  # grass
  scores = np.array([[0.0, 0.9, 0.7], [0.5, 0.8, 0.2], [0.5, 0.5, 0.4]])
  segments = predictor_lib.segments_from_maps(panoptic, scores, METADATA)
  assert [s.id for s in segments] == [257, 258, 768]
  person, second, grass = segments
  assert (person.class_id, person.category_id, person.category_name) == (1, 1, 'person')
  assert person.is_thing and not grass.is_thing
  assert (person.area, second.area, grass.area) == (3, 2, 3)
  assert person.score == pytest.approx(0.8) and second.score == pytest.approx(0.3)
  assert grass.category_id == 7 and grass.bbox == (0, 1, 2, 2)
  assert person.bbox == (1, 0, 2, 2)
  assert person.to_json()['bbox'] == [1, 0, 2, 2]


def test_lazy_top_level_name():
  assert kmax_tf.Predictor is predictor_lib.Predictor


@pytest.mark.slow
def test_float_arrays_through_predictor_never_wrap(export_case, photos):
  """A numpy float image reaches the uint8 signature only after Predictor's range rule."""
  from kmax_tf.export import image_io
  predictor = kmax_tf.Predictor.from_saved_model(export_case.base_path)
  photo = photos[2][:120, :160]
  expected = predictor(photo).panoptic
  np.testing.assert_array_equal(predictor(photo.astype(np.float64)).panoptic, expected)
  with pytest.raises(image_io.ImageReadError, match=r'looks scaled to \[0, 1\]'):
    predictor(photo.astype(np.float32) / 255.0)
  # 300 would wrap to 44 in TensorFlow's uint8 cast: an error instead.
  for dtype in (np.float32, np.int64):
    bad = photo.astype(dtype)
    bad[0, 0, 0] = 300
    with pytest.raises(image_io.ImageReadError, match=r'pixel values must lie in \[0, 255\]'):
      predictor(bad)


@pytest.mark.slow
def test_from_saved_model_matches_in_process_evaluation(export_case, photos):
  predictor = kmax_tf.Predictor.from_saved_model(export_case.base_path)  # base path: latest
  assert predictor.source == str(export_case.version_dir)
  assert predictor.class_names[1] == 'disc'
  result = predictor(photos[2])
  expected = conftest.reference_maps(export_case.module.model, photos[2], export_case.config)
  np.testing.assert_array_equal(result.panoptic, expected[common.PRED_PANOPTIC_KEY])
  np.testing.assert_array_equal(result.semantic, expected[common.PRED_SEMANTIC_KEY])
  assert result.panoptic.shape == photos[2].shape[:2]
  assert result.segments and sum(s.area for s in result.segments) == np.sum(
      result.panoptic // 256 != 0)
  assert {s.id for s in result.segments} == set(np.unique(result.panoptic)) - {0}
  for segment in result.segments:
    assert segment.category_name == predictor.class_names[segment.class_id]
    assert segment.is_thing == (segment.class_id in (1, 2, 3))
    assert 0.0 <= segment.score <= 1.0
  # Grayscale and RGBA versions of an image give the maps of its RGB version.
  gray = photos[2].mean(axis=-1).astype(np.uint8)
  np.testing.assert_array_equal(predictor(gray).panoptic,
                                predictor(np.stack([gray] * 3, -1)).panoptic)
  rgba = np.concatenate([photos[2], np.full(photos[2].shape[:2] + (1,), 9, np.uint8)], -1)
  np.testing.assert_array_equal(predictor(rgba).panoptic, result.panoptic)
  # A very large image is resized like evaluation and answered at its size.
  large = np.kron(photos[1][:100, :150], np.ones((20, 20, 1), np.uint8))
  assert predictor(large).panoptic.shape == (2000, 3000)


@pytest.mark.slow
def test_from_checkpoint_equals_from_saved_model(export_case, photos):
  predictor = kmax_tf.Predictor.from_checkpoint(export_case.config,
                                                export_case.checkpoint_prefix)
  exported = kmax_tf.Predictor.from_saved_model(export_case.version_dir)
  for image in photos[:2]:
    np.testing.assert_array_equal(predictor(image).panoptic, exported(image).panoptic)
  assert predictor.metadata['class_names'] == exported.metadata['class_names']


def test_foreign_and_missing_saved_models_are_rejected(tmp_path):
  module = tf.Module()
  module.scale = tf.Variable(2.0)
  module.run = tf.function(lambda images: {'out': images * module.scale},
                           input_signature=[tf.TensorSpec([None], tf.float32)])
  tf.saved_model.save(module, str(tmp_path / 'other'), signatures=module.run)
  with pytest.raises(ValueError, match='not a kmax_tf panoptic export'):
    predictor_lib.Predictor.from_saved_model(tmp_path / 'other')
  with pytest.raises(ValueError, match='does not exist'):
    predictor_lib.Predictor.from_saved_model(tmp_path / 'missing')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='neither a SavedModel'):
    predictor_lib.Predictor.from_saved_model(tmp_path / 'empty')
  with pytest.raises(ValueError, match='missing'):
    predictor_lib.Predictor(lambda images: {}, {'format': serving.METADATA_FORMAT})
