"""Evaluator plumbing with a model that predicts the ground truth exactly (PQ = mIoU = 1)."""

import numpy as np
import orbit
import pytest
import tensorflow as tf

from kmax_tf import coloring
from kmax_tf import common
from kmax_tf.data import dataset_descriptors
from kmax_tf.data import preprocessing
from kmax_tf.keras_setup import keras
from kmax_tf.protos import config_pb2
from kmax_tf.training import evaluator as evaluator_lib

DESCRIPTOR = dataset_descriptors.get_dataset_descriptor('kmax_demo_panoptic')
DIVISOR = DESCRIPTOR.panoptic_label_divisor
CROP = 16


class EchoModel(keras.Model):
  """Reads the panoptic label back from the image: R = class * 10, G = instance."""

  def __init__(self, corrupt: bool = False):
    super().__init__()
    self._corrupt = corrupt

  def call(self, images, training=False):
    semantic = tf.cast(tf.round(images[..., 0] / 10.0), tf.int32)
    instance = tf.cast(tf.round(images[..., 1]), tf.int32)
    if self._corrupt:  # Misses the boxes: predicts grass there.
      semantic = tf.where(semantic == 2, 5, semantic)
      instance = tf.zeros_like(instance)
    ones = tf.ones_like(images[..., 0])
    return {common.PRED_PANOPTIC_KEY: semantic * DIVISOR + instance,
            common.PRED_SEMANTIC_KEY: semantic,
            common.PRED_SEMANTIC_SCORES_KEY: ones, common.PRED_INSTANCE_SCORES_KEY: ones}


def _sample(index):
  rng = np.random.default_rng(index)
  height, width = 10 + index, 12
  semantic = np.full((height, width), 5, np.int32)  # grass
  semantic[:3] = 4  # sky
  semantic[5:8, 2:6] = 2  # a box, instance 1
  semantic[5:8, 7:10] = 2  # another box, instance 2
  instance = np.zeros_like(semantic)
  instance[5:8, 2:6] = 1
  instance[5:8, 7:10] = 2
  semantic[0, 0] = 0  # one void pixel
  panoptic = semantic * DIVISOR + instance
  image = np.zeros((CROP, CROP, 3), np.float32)  # padded eval crop
  image[:height, :width, 0] = semantic * 10.0
  image[:height, :width, 1] = instance
  image[:height, :width, 2] = rng.uniform(0, 255, (height, width))
  return {
      common.IMAGE: image, common.RESIZED_IMAGE: image[:height, :width],
      common.GT_SIZE_RAW: np.array([height, width], np.int32),
      common.GT_PANOPTIC_RAW: panoptic, common.GT_SEMANTIC_RAW: semantic,
      common.GT_IS_CROWD_RAW: np.zeros_like(semantic),
  }


def _dataset():
  samples = [_sample(i) for i in range(3)]
  return tf.data.Dataset.from_generator(
      lambda: iter(samples),
      output_signature={key: tf.TensorSpec([None] * value.ndim, tf.as_dtype(value.dtype))
                        for key, value in samples[0].items()}).batch(1)


def _config():
  config = config_pb2.ExperimentOptions()
  config.evaluator_options.num_vis_samples = 2
  return config


@pytest.mark.parametrize('corrupt', [False, True])
def test_perfect_and_wrong_predictions(tmp_path, corrupt):
  step = tf.Variable(7, dtype=tf.int64)
  evaluator = evaluator_lib.Evaluator(_config(), EchoModel(corrupt), step, str(tmp_path),
                                      _dataset(), descriptor=DESCRIPTOR)
  writer = tf.summary.create_file_writer(str(tmp_path / 'eval'))
  with writer.as_default():
    logs = evaluator.evaluate(tf.constant(-1))
  if corrupt:
    # sky is exact, grass grows over the boxes (IoU < 1), the boxes are missed.
    assert logs['evaluation/pq/RQ_stuff'] == pytest.approx(1.0)
    assert 0.5 < logs['evaluation/pq/PQ_stuff'] < 1.0
    assert logs['evaluation/pq/PQ_thing'] == 0.0
    # Three classes (sky, grass, box); box contributes 0.
    assert logs['evaluation/pq/PQ'] == pytest.approx(2 * logs['evaluation/pq/PQ_stuff'] / 3)
    assert logs['evaluation/iou/IoU'] < 1.0
  else:
    for key in ('PQ', 'SQ', 'RQ', 'PQ_thing', 'PQ_stuff'):
      assert logs[f'evaluation/pq/{key}'] == pytest.approx(1.0), key
    assert logs['evaluation/iou/IoU'] == pytest.approx(1.0)
  picture = tmp_path / 'vis' / 'predictions_step7.png'
  assert evaluator.last_picture == str(picture)
  image = tf.io.decode_png(picture.read_bytes()).numpy()
  # Two rows (heights 10 and 11, 4-pixel gap) of three 12-pixel panels (4-pixel gaps).
  assert image.shape == (10 + 4 + 11, 3 * 12 + 2 * 4, 3)
  box_color = np.array(DESCRIPTOR.colormap[2])
  assert (image[6, 12 + 4 + 3] == box_color).all()  # ground truth panel, first box
  if not corrupt:
    np.testing.assert_array_equal(image[:10, 12 + 4:24 + 4], image[:10, 2 * 16:2 * 16 + 12])


@pytest.mark.parametrize('corrupt', [False, True])
def test_mask_ap_when_asked(tmp_path, corrupt):
  config = _config()
  config.evaluator_options.num_vis_samples = 0
  config.evaluator_options.compute_mask_ap = True
  config.evaluator_options.detailed_ap_metrics = True
  evaluator = evaluator_lib.Evaluator(config, EchoModel(corrupt), tf.Variable(1, dtype=tf.int64),
                                      str(tmp_path), _dataset(), descriptor=DESCRIPTOR)
  logs = evaluator.evaluate(tf.constant(-1))
  # Two box instances per image: all found exactly, or all missed.
  assert logs['evaluation/ap/AP_Mask'] == pytest.approx(0.0 if corrupt else 1.0)
  assert 'evaluation/ap/AR_Mask_maxdets=100' in logs
  assert evaluator._mask_ap.num_gt_instances == 6
  assert 'evaluation/ap/AP_Mask' not in evaluator_lib.Evaluator(
      _config(), EchoModel(), tf.Variable(1, dtype=tf.int64), str(tmp_path), _dataset(),
      descriptor=DESCRIPTOR).evaluate(tf.constant(-1))


def test_undo_preprocessing_crops_then_resizes():
  label = tf.reshape(tf.range(16), [1, 4, 4])
  cropped = preprocessing.undo_preprocessing(label, [2, 3], [2, 3])
  np.testing.assert_array_equal(cropped.numpy()[0], [[0, 1, 2], [4, 5, 6]])
  upsampled = preprocessing.undo_preprocessing(label, [2, 2], [3, 3])
  np.testing.assert_array_equal(upsampled.numpy()[0, [0, 2]][:, [0, 2]], [[0, 1], [4, 5]])


def test_colorize_panoptic_shades_instances():
  panoptic = np.array([[4 * DIVISOR, 2 * DIVISOR + 1, 2 * DIVISOR + 2, 0]])
  colors = coloring.colorize_panoptic(panoptic, DESCRIPTOR.colormap, DIVISOR, 0)
  assert (colors[0, 0] == DESCRIPTOR.colormap[4]).all()
  assert (colors[0, 1] == DESCRIPTOR.colormap[2]).all()
  assert not (colors[0, 2] == colors[0, 1]).all()  # second instance: a shade of the color
  assert (colors[0, 3] == 0).all()  # void


def test_global_step_is_used_with_orbit_controller(tmp_path):
  step = tf.Variable(0, dtype=tf.int64)
  evaluator = evaluator_lib.Evaluator(_config(), EchoModel(), step, str(tmp_path), _dataset(),
                                      descriptor=DESCRIPTOR)
  controller = orbit.Controller(evaluator=evaluator, global_step=step,
                                eval_summary_dir=str(tmp_path / 'eval'))
  logs = controller.evaluate(steps=2)
  assert logs['evaluation/pq/PQ'] == pytest.approx(1.0)
  assert list((tmp_path / 'eval').glob('events.out.tfevents.*'))
