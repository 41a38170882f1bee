"""DeepLab2's evaluator options through the Evaluator: the files, their names and contents.

The model reads its prediction back from the image (R = class * 10,
G = instance), so every written map can be compared with a known one.
"""

import io
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kmax_tf import common
from kmax_tf import panoptic_rgb
from kmax_tf.data import dataset_descriptors
from kmax_tf.keras_setup import keras
from kmax_tf.protos import config_pb2
from kmax_tf.training import evaluator as evaluator_lib
from kmax_tf.training import prediction_saving
from tests.training import test_end_to_end

DEMO = dataset_descriptors.get_dataset_descriptor('kmax_demo_panoptic')
CITYSCAPES = dataset_descriptors.get_dataset_descriptor('cityscapes_panoptic')
CROP = 16
PICTURES = ('%06d_image.png', '%06d_semantic_prediction.png', '%06d_semantic_label.png',
            '%06d_instance_prediction.png', '%06d_panoptic_prediction.png',
            '%06d_panoptic_label.png', '%06d_semantic_error.png')


class EchoModel(keras.Model):
  """Predicts semantic = round(R / 10), instance = G, with scores from B / 255."""

  def __init__(self, divisor: int):
    super().__init__()
    self._divisor = divisor

  def call(self, images, training=False):
    semantic = tf.cast(tf.round(images[..., 0] / 10.0), tf.int32)
    instance = tf.cast(tf.round(images[..., 1]), tf.int32)
    score = images[..., 2] / 255.0
    return {common.PRED_PANOPTIC_KEY: semantic * self._divisor + instance,
            common.PRED_SEMANTIC_KEY: semantic, common.PRED_INSTANCE_KEY: instance,
            common.PRED_SEMANTIC_SCORES_KEY: score,
            common.PRED_INSTANCE_SCORES_KEY: tf.ones_like(score)}


def _scene(index, stuff, thing, void):
  """Labels of one [10 + index, 12] image: stuff class, two thing instances, a void pixel."""
  height, width = 10 + index, 12
  semantic = np.full((height, width), stuff, np.int32)
  instance = np.zeros_like(semantic)
  semantic[5:8, 2:6], instance[5:8, 2:6] = thing, 1
  semantic[5:8, 7:10], instance[5:8, 7:10] = thing, 2
  semantic[0, 0] = void
  return semantic, instance


def _dataset(descriptor, names, stuff, thing, labels=True):
  samples = []
  for index, name in enumerate(names):
    semantic, instance = _scene(index, stuff, thing, descriptor.ignore_label)
    height, width = semantic.shape
    image = np.zeros((CROP, CROP, 3), np.float32)  # The padded eval crop.
    image[:height, :width, 0] = semantic * 10.0
    image[:height, :width, 1] = instance
    image[:height, :width, 2] = 127.5
    sample = {common.IMAGE: image, common.RESIZED_IMAGE: image[:height, :width],
              common.GT_SIZE_RAW: np.array([height, width], np.int32),
              common.IMAGE_NAME: np.array(name.encode())}
    if labels:
      sample[common.GT_PANOPTIC_RAW] = semantic * descriptor.panoptic_label_divisor + instance
      sample[common.GT_SEMANTIC_RAW] = semantic
      sample[common.GT_IS_CROWD_RAW] = np.zeros_like(semantic)
    samples.append(sample)
  return tf.data.Dataset.from_generator(
      lambda: iter(samples),
      output_signature={key: tf.TensorSpec([None] * value.ndim, tf.as_dtype(value.dtype))
                        for key, value in samples[0].items()}).batch(1)


def _evaluate(config, descriptor, dataset, model_dir):
  evaluator = evaluator_lib.Evaluator(config, EchoModel(descriptor.panoptic_label_divisor),
                                      tf.Variable(3, dtype=tf.int64), model_dir, dataset,
                                      descriptor=descriptor)
  return evaluator, evaluator.evaluate(tf.constant(-1))


def _read_png(path):
  with tf.io.gfile.GFile(path, 'rb') as f:
    return np.asarray(Image.open(io.BytesIO(f.read())))


@pytest.mark.parametrize('raw_format', ['two_channel_png', 'three_channel_png',
                                        'two_channel_numpy_array'])
def test_coco_style_dataset_writes_raw_and_submission_and_pictures(tmp_path, raw_format):
  config = config_pb2.ExperimentOptions()
  options = config.evaluator_options
  options.save_predictions = True
  options.num_vis_samples = 1
  options.save_raw_predictions = True
  options.raw_panoptic_format = raw_format
  names = ['000000000139.jpg', '000000000285.jpg']
  evaluator, logs = _evaluate(config, DEMO, _dataset(DEMO, names, stuff=5, thing=2),
                              str(tmp_path))
  assert logs['evaluation/pq/PQ'] == pytest.approx(1.0)
  vis = tmp_path / 'vis'
  divisor = DEMO.panoptic_label_divisor
  for index, name in enumerate(names):
    stem = name[:-4]
    semantic, instance = _scene(index, stuff=5, thing=2, void=0)
    # The demo descriptor has no dataset ids: eval ids are the class ids.
    np.testing.assert_array_equal(_read_png(vis / 'raw_semantic' / f'{stem}.png'), semantic)
    if raw_format == 'two_channel_numpy_array':
      raw = np.load(vis / 'raw_panoptic' / f'{stem}.npy')
      np.testing.assert_array_equal(raw[..., 1], instance)
    else:
      raw = _read_png(vis / 'raw_panoptic' / f'{stem}.png')
      if raw_format == 'two_channel_png':
        np.testing.assert_array_equal(raw[..., 1], instance)
      else:
        np.testing.assert_array_equal(raw[..., 1].astype(int) * 256 + raw[..., 2], instance)
    np.testing.assert_array_equal(raw[..., 0], semantic)
    # The COCO panoptic submission decodes back to the predicted map.
    ids = panoptic_rgb.rgb_to_ids(_read_png(vis / 'panoptic_cocoformat' / f'{stem}.png'))
    annotation = json.loads((vis / 'panoptic_cocoformat.json').read_text())['annotations'][index]
    assert annotation['image_id'] == int(stem) and annotation['file_name'] == f'{stem}.png'
    segment_to_label = {s['id']: s['category_id'] * divisor for s in annotation['segments_info']}
    ranks = {}
    for segment in annotation['segments_info']:
      if segment['isthing']:
        ranks[segment['category_id']] = ranks.get(segment['category_id'], 0) + 1
        segment_to_label[segment['id']] += ranks[segment['category_id']]
    decoded = np.vectorize(lambda v, table=segment_to_label: table.get(v, 0))(ids)
    np.testing.assert_array_equal(decoded, semantic * divisor + instance)
  # save_predictions: DeepLab2's seven pictures for the first num_vis_samples=1 sample only.
  pictures = sorted(p.name for p in vis.glob('0000*.png'))
  assert pictures == sorted(name % 0 for name in PICTURES)
  semantic, _ = _scene(0, stuff=5, thing=2, void=0)
  colored = _read_png(vis / '000000_semantic_prediction.png')
  assert (colored[2, 2] == DEMO.colormap[5]).all() and (colored[6, 3] == DEMO.colormap[2]).all()
  assert (colored[0, 0] == 0).all()  # void
  np.testing.assert_array_equal(_read_png(vis / '000000_image.png')[..., 0], semantic * 10)
  assert not _read_png(vis / '000000_semantic_error.png').any()  # A perfect prediction.
  assert (vis / 'predictions_step3.png').exists()  # kmax_tf's summary picture stays.
  assert len(evaluator.saver.written) == 2 * 3 + 7 + 1


def test_cityscapes_test_split_eval_ids_and_raw_instances_on_ram(tmp_path):
  """No labels (a test split), Cityscapes ids, files on ram:// through override_save_dir."""
  config = config_pb2.ExperimentOptions()
  config.eval_dataset_options.decode_groundtruth_label = False
  options = config.evaluator_options
  options.save_predictions = True  # Needs labels: writes no pictures here, as DeepLab2.
  options.save_raw_predictions = True
  save_dir = 'ram://prediction_saving/cityscapes'
  options.override_save_dir = save_dir
  name = 'frankfurt_000000_000294_leftImg8bit.png'
  # Train ids: road (0), car (13, two instances) and void (255).
  dataset = _dataset(CITYSCAPES, [name], stuff=0, thing=13, labels=False)
  evaluator, logs = _evaluate(config, CITYSCAPES, dataset, str(tmp_path))
  assert logs == {}
  stem = name[:-4]
  semantic = _read_png(f'{save_dir}/raw_semantic/{stem}.png')
  # Hand-checked Cityscapes label ids: road 7, car 26, void 0.
  assert semantic[2, 2] == 7 and semantic[6, 3] == 26 and semantic[0, 0] == 0
  assert set(np.unique(semantic)) == {0, 7, 26}
  raw = _read_png(f'{save_dir}/raw_panoptic/{stem}.png')
  np.testing.assert_array_equal(raw[..., 0], semantic)
  assert raw[6, 3, 1] == 1 and raw[6, 8, 1] == 2 and raw[2, 2, 1] == 0
  with tf.io.gfile.GFile(f'{save_dir}/raw_instance/{stem}.txt') as f:
    lines = f.read().splitlines()
  # cityscapesScripts' instance format; score = instance score 1 * semantic score 0.5.
  assert lines == [f'instance_masks/{stem}_class_26_instance_1.png 26 0.500000',
                   f'instance_masks/{stem}_class_26_instance_2.png 26 0.500000']
  mask = _read_png(f'{save_dir}/raw_instance/instance_masks/{stem}_class_26_instance_2.png')
  assert mask.sum() == 9 and mask[6, 8] == 1
  with tf.io.gfile.GFile(f'{save_dir}/panoptic_cocoformat.json') as f:
    annotation = json.load(f)['annotations'][0]
  # Cityscapes panoptic format: string image id, stuff id = label id, things label id * 1000 + k.
  assert annotation['image_id'] == 'frankfurt_000000_000294'
  assert annotation['file_name'] == 'frankfurt_000000_000294.png'
  assert sorted(s['id'] for s in annotation['segments_info']) == [7, 26000, 26001]
  ids = panoptic_rgb.rgb_to_ids(_read_png(f'{save_dir}/panoptic_cocoformat/'
                                          'frankfurt_000000_000294.png'))
  assert ids[2, 2] == 7 and ids[0, 0] == 0 and {ids[6, 3], ids[6, 8]} == {26000, 26001}
  assert not tf.io.gfile.glob(f'{save_dir}/0000*.png')
  assert not list(tmp_path.iterdir())  # Nothing in model_dir/vis: everything went to ram://.
  assert len(evaluator.saver.written) == 2 + 1 + 1 + 1


def test_convert_raw_to_eval_ids_false_keeps_train_ids(tmp_path):
  config = config_pb2.ExperimentOptions()
  config.evaluator_options.save_raw_predictions = True
  config.evaluator_options.convert_raw_to_eval_ids = False
  config.evaluator_options.num_vis_samples = 0
  name = 'lindau_000000_000019_leftImg8bit.png'
  _evaluate(config, CITYSCAPES, _dataset(CITYSCAPES, [name], stuff=0, thing=13), str(tmp_path))
  semantic = _read_png(tmp_path / 'vis' / 'raw_semantic' / f'{name[:-4]}.png')
  assert semantic[2, 2] == 0 and semantic[6, 3] == 13 and semantic[0, 0] == 255


def test_bad_raw_panoptic_format_is_named():
  options = config_pb2.ExperimentOptions().evaluator_options
  options.save_raw_predictions = True
  options.raw_panoptic_format = 'rgb_png'
  with pytest.raises(ValueError, match=r"raw_panoptic_format='rgb_png' is not one of"):
    prediction_saving.PredictionSaver(options, DEMO, '/unused')


def test_trainer_eval_mode_writes_deeplab2_outputs(tiny_setup, tmp_path):
  """trainer/train.py --mode=eval with DeepLab2's options, on the real tiny model."""
  _, data, _ = tiny_setup
  old = 'evaluator_options { eval_steps: -1 num_vis_samples: 2'
  assert old in test_end_to_end.TINY_CONFIG
  config = tmp_path / 'tiny.textproto'
  config.write_text(test_end_to_end.TINY_CONFIG.replace(
      old, old.replace('num_vis_samples: 2', 'num_vis_samples: 1 save_predictions: true '
                       'save_raw_predictions: true raw_panoptic_format: "two_channel_png"')))
  result = test_end_to_end._train(config, data, tmp_path / 'model', '--mode=eval',
                                  '--eval_initial_model')
  assert result.returncode == 0, result.stderr[-4000:]
  vis = tmp_path / 'model' / 'tiny' / 'vis'
  names = ['demo_val_00000', 'demo_val_00001']
  assert sorted(p.stem for p in (vis / 'raw_semantic').glob('*.png')) == names
  assert sorted(p.stem for p in (vis / 'panoptic_cocoformat').glob('*.png')) == names
  assert sorted(p.name for p in vis.glob('0000*.png')) == sorted(name % 0 for name in PICTURES)
  annotations = json.loads((vis / 'panoptic_cocoformat.json').read_text())['annotations']
  assert [a['image_id'] for a in annotations] == names
  divisor = DEMO.panoptic_label_divisor
  for name, annotation in zip(names, annotations):
    raw = _read_png(vis / 'raw_panoptic' / f'{name}.png').astype(np.int64)
    assert raw.shape == (33, 33, 3)
    raw_panoptic = raw[..., 0] * divisor + raw[..., 1]
    ids = panoptic_rgb.rgb_to_ids(_read_png(vis / 'panoptic_cocoformat' / f'{name}.png'))
    # The submission and the raw prediction describe the same segments.
    for segment in annotation['segments_info']:
      labels = np.unique(raw_panoptic[ids == segment['id']])
      assert len(labels) == 1 and labels[0] // divisor == segment['category_id']
      assert (ids == segment['id']).sum() == segment['area']
    assert f'Saved {2 * 3 + 7 + 1} prediction files to {vis}' in result.stdout
