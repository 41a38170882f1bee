"""Tests of kmax_tf.data.input_pipeline."""

import shutil

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format

from kmax_tf.data import dataset_descriptors
from kmax_tf.data import input_pipeline
from kmax_tf.data import tfrecord_decoder
from kmax_tf.protos import dataset_pb2

COCO = dataset_descriptors.get_dataset_descriptor('coco_panoptic')

_EVAL_OPTIONS = """
dataset: "coco_panoptic" batch_size: 1 crop_size: 257 crop_size: 257
min_resize_value: 257 min_resize_value: 257 max_resize_value: 257 max_resize_value: 257
increase_small_instance_weights: false small_instance_weight: 1.0
thing_id_mask_annotations: true
"""

_TRAIN_OPTIONS = """
dataset: "coco_panoptic" batch_size: 2 crop_size: 65 crop_size: 65
thing_id_mask_annotations: true
augmentations {
  min_scale_factor: 0.5 max_scale_factor: 1.5 scale_factor_step_size: 0.1
  autoaugment_policy_name: "simple_classification_policy_magnitude_scale_0.2"
  panoptic_copy_paste { panoptic_copy_paste_scale: 1.0 }
}
"""


def _options(text, *patterns, **fields):
  options = text_format.Parse(text, dataset_pb2.DatasetOptions())
  options.file_pattern.extend(str(p) for p in patterns)
  for key, value in fields.items():
    setattr(options, key, value)
  return options


def _as_numpy(batches):
  return [{k: v.numpy() for k, v in batch.items()} for batch in batches]


@pytest.fixture(scope='module')
def tfrecord_dir(dl2_reference):
  return dl2_reference / 'data' / 'tfrecord'


def test_eval_pipeline_equals_deeplab2(tfrecord_dir, dl2_reference):
  reference = np.load(dl2_reference / 'data' / 'coco_val_eval_samples_257.npz')
  options = _options(_EVAL_OPTIONS, tfrecord_dir / 'val-*.tfrecord')
  batches = _as_numpy(input_pipeline.build_dataset(options, COCO, is_training=False))
  assert len(batches) == 2
  for i, batch in enumerate(batches):
    for key, value in batch.items():
      expected = reference[f'sample{i}/{key}']
      if key == 'image_name':
        assert value.astype(str).tolist() == expected.tolist()
      elif value.dtype == np.float32:
        np.testing.assert_allclose(value, expected, atol=3.0 if 'image' in key else 0, err_msg=key)
      else:
        np.testing.assert_array_equal(value, expected, err_msg=key)


@pytest.fixture(scope='module')
def train_batches(tfrecord_dir):
  options = _options(_TRAIN_OPTIONS, tfrecord_dir / 'train-*.tfrecord')
  first = _as_numpy(input_pipeline.build_dataset(options, COCO, is_training=True,
                                                 seed=11).take(3))
  again = _as_numpy(input_pipeline.build_dataset(options, COCO, is_training=True,
                                                 seed=11).take(3))
  options.seed = 12  # the options seed is used when no argument is given
  other = _as_numpy(input_pipeline.build_dataset(options, COCO, is_training=True).take(3))
  return first, again, other


def test_training_is_reproducible_under_a_seed(train_batches):
  first, again, other = train_batches
  for batch_a, batch_b in zip(first, again):
    assert set(batch_a) == set(batch_b)
    for key in batch_a:
      np.testing.assert_array_equal(batch_a[key], batch_b[key], err_msg=key)
  assert any(not np.array_equal(a['image'], b['image']) for a, b in zip(first, other))


def test_training_batches_have_training_keys(train_batches):
  batch = train_batches[0][0]
  assert batch['image'].shape == (2, 65, 65, 3)
  assert batch['panoptic_gt'].shape == (2, 65, 65)
  assert batch['thing_id_class_gt'].shape == (2, 128)
  assert batch['instance_regression_gt'].shape == (2, 65, 65, 2)
  assert 'image_name' not in batch and 'panoptic_raw' not in batch
  # Labels stay consistent after augmentation and copy-paste.
  for batch in train_batches[0]:
    np.testing.assert_array_equal(batch['semantic_gt'], batch['panoptic_gt'] // 256)
    assert batch['semantic_gt'].max() < COCO.num_classes
    for mask, classes, panoptic in zip(batch['thing_id_mask_gt'], batch['thing_id_class_gt'],
                                       batch['panoptic_gt']):
      for thing_id in np.unique(mask[mask >= 0]):
        ids = np.unique(panoptic[mask == thing_id])
        assert len(ids) == 1 and ids[0] // 256 == classes[thing_id]


def test_static_batch_dimension_for_training(tfrecord_dir):
  options = _options(_TRAIN_OPTIONS, tfrecord_dir / 'train-*.tfrecord')
  dataset = input_pipeline.build_dataset(options, COCO, is_training=True, seed=1)
  assert dataset.element_spec['image'].shape.as_list() == [2, 65, 65, 3]


def test_input_context_shards_files_and_splits_batch(tfrecord_dir):
  options = _options(_EVAL_OPTIONS, tfrecord_dir / 'val-*.tfrecord', batch_size=2)
  names = []
  for pipeline_id in range(2):
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                         num_replicas_in_sync=2)
    batches = _as_numpy(input_pipeline.build_dataset(options, COCO, is_training=False,
                                                     input_context=context))
    assert [b['image'].shape[0] for b in batches] == [1]  # 2 global / 2 replicas
    names.append(batches[0]['image_name'][0])
  assert sorted(names) == [b'000000002000', b'000000002001']
  # Fewer files than pipelines: records are split instead, each read once.
  options.batch_size = 3
  counts = []
  for pipeline_id in range(3):
    context = tf.distribute.InputContext(num_input_pipelines=3, input_pipeline_id=pipeline_id,
                                         num_replicas_in_sync=3)
    counts.append(sum(1 for _ in input_pipeline.build_dataset(
        options, COCO, is_training=False, input_context=context)))
  assert counts == [1, 1, 0]


def test_distribute_datasets_from_function(tfrecord_dir):
  strategy = tf.distribute.MirroredStrategy(['/cpu:0'])
  options = _options(_TRAIN_OPTIONS, tfrecord_dir / 'train-*.tfrecord')
  options.augmentations.ClearField('autoaugment_policy_name')  # faster tracing
  distributed = strategy.distribute_datasets_from_function(
      lambda context: input_pipeline.build_dataset(options, COCO, is_training=True,
                                                   input_context=context, seed=5))
  batch = next(iter(distributed))
  images = strategy.experimental_local_results(batch['image'])
  assert [tuple(image.shape) for image in images] == [(2, 65, 65, 3)]


def test_several_globs(tfrecord_dir):
  options = _options(_EVAL_OPTIONS, tfrecord_dir / 'val-00000*', tfrecord_dir / 'train-*',
                     tfrecord_dir / 'val-*')  # overlapping globs read each file once
  options.ClearField('thing_id_mask_annotations')
  count = sum(1 for _ in input_pipeline.build_dataset(options, COCO, is_training=False))
  assert count == 6


def test_configuration_errors(tfrecord_dir, tmp_path):
  missing = str(tmp_path / 'nothing-*.tfrecord')
  with pytest.raises(ValueError, match='nothing-'):
    input_pipeline.build_dataset(_options(_EVAL_OPTIONS, tfrecord_dir / 'val-*', missing), COCO,
                                 is_training=False)
  with pytest.raises(ValueError, match='file_pattern is empty'):
    input_pipeline.build_dataset(_options(_EVAL_OPTIONS), COCO, is_training=False)
  with pytest.raises(ValueError, match='1 sample per replica'):
    input_pipeline.build_dataset(_options(_EVAL_OPTIONS, tfrecord_dir / 'val-*', batch_size=2),
                                 COCO, is_training=False)
  context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                       num_replicas_in_sync=3)
  with pytest.raises(ValueError, match='not divisible'):
    input_pipeline.build_dataset(_options(_TRAIN_OPTIONS, tfrecord_dir / 'train-*'), COCO,
                                 is_training=True, input_context=context)


def test_corrupt_record_fails_loudly(tfrecord_dir, tmp_path):
  data = bytearray((tfrecord_dir / 'val-00000-of-01000.tfrecord').read_bytes())
  data[5000] ^= 0xFF
  bad = tmp_path / 'val-bad.tfrecord'
  bad.write_bytes(bytes(data))
  shutil.copy(tfrecord_dir / 'val-00001-of-01000.tfrecord', tmp_path / 'val-good.tfrecord')
  options = _options(_EVAL_OPTIONS, tmp_path / 'val-*.tfrecord')
  with pytest.raises(tf.errors.InvalidArgumentError, match='(?s)val-bad.tfrecord.*is corrupt'):
    list(input_pipeline.build_dataset(options, COCO, is_training=False))
  # Two records in one file, the second corrupt: the first is delivered, then the error.
  first = (tfrecord_dir / 'val-00000-of-01000.tfrecord').read_bytes()
  second = bytearray((tfrecord_dir / 'val-00001-of-01000.tfrecord').read_bytes())
  second[3000] ^= 0xFF
  (tmp_path / 'val-bad.tfrecord').write_bytes(first + bytes(second))
  (tmp_path / 'val-good.tfrecord').unlink()
  iterator = iter(input_pipeline.build_dataset(options, COCO, is_training=False))
  assert next(iterator)['image_name'][0] == b'000000002000'
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=f'(?s)val-bad.tfrecord.*byte offset.*{len(first)}'):
    next(iterator)
  # Truncated file, training pipeline: fails too, naming the file.
  (tmp_path / 'val-bad.tfrecord').write_bytes(
      (tfrecord_dir / 'val-00000-of-01000.tfrecord').read_bytes()[:-10])
  options = _options(_TRAIN_OPTIONS, tmp_path / 'val-*.tfrecord')
  options.augmentations.ClearField('autoaugment_policy_name')
  with pytest.raises(tf.errors.InvalidArgumentError, match='(?s)val-bad.tfrecord.*truncated'):
    list(input_pipeline.build_dataset(options, COCO, is_training=True, seed=0).take(4))
  with pytest.raises(ValueError, match=r'val-bad.tfrecord: record #0'):
    input_pipeline.validate_tfrecord_files([str(tmp_path / 'val-*.tfrecord')], COCO)
  shutil.copy(tfrecord_dir / 'val-00001-of-01000.tfrecord', tmp_path / 'val-good.tfrecord')
  assert input_pipeline.validate_tfrecord_files([str(tmp_path / 'val-good*')], COCO) == 1


def test_bad_image_names_record_and_file(tfrecord_dir, tmp_path):
  good = next(iter(tf.data.TFRecordDataset(str(tfrecord_dir / 'val-00000-of-01000.tfrecord'))))
  example = tf.train.Example.FromString(good.numpy())
  example.features.feature['image/encoded'].bytes_list.value[:] = [b'\xff\xd8\xff broken']
  path = tmp_path / 'val-broken.tfrecord'
  tfrecord_decoder.write_tfrecord(str(path), [example])
  options = _options(_EVAL_OPTIONS, path)
  with pytest.raises(tf.errors.InvalidArgumentError, match='(?s)000000002000.*val-broken'):
    list(input_pipeline.build_dataset(options, COCO, is_training=False))
  with pytest.raises(ValueError, match='(?s)val-broken.tfrecord: record #0.*Unreadable image'):
    input_pipeline.validate_tfrecord_files([str(path)], COCO)
