"""The input position: which pipelines can be checkpointed, checked before any work."""

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf.config import loader
from kmax_tf.data import dataset_descriptors
from kmax_tf.data import input_pipeline
from kmax_tf.training import checkpointing
from kmax_tf.training import train_lib


def _released_coco_options(repo_root, dl2_reference, crop=65):
  records = dl2_reference / 'data' / 'tfrecord'
  config = loader.load_config(
      repo_root / 'configs' / 'coco' / 'kmax_meta_r50_os32.textproto',
      {'EXPERIMENT_NAME': 'x', 'INIT_CHECKPOINT': '', 'TRAIN_SET': str(records / 'train-*'),
       'VAL_SET': str(records / 'val-*')},
      [f'train_dataset_options.crop_size={crop},{crop}',
       f'train_dataset_options.min_resize_value={crop}',
       f'train_dataset_options.max_resize_value={crop}', 'train_dataset_options.batch_size=2'])
  return config.train_dataset_options


def test_released_coco_pipeline_can_be_saved_and_resumes_in_order(repo_root, dl2_reference,
                                                                  tmp_path):
  # autoaugment + copy-paste + thing-id targets, as the released COCO configs.
  options = _released_coco_options(repo_root, dl2_reference)
  assert options.augmentations.autoaugment_policy_name
  assert options.augmentations.HasField('panoptic_copy_paste')
  descriptor = dataset_descriptors.descriptor_from_options(options)
  dataset = input_pipeline.build_dataset(options, descriptor, is_training=True, seed=3)
  iterator = iter(dataset)
  assert checkpointing.input_state_problem(iterator) is None
  next(iterator)
  prefix = tf.train.Checkpoint(train_iterator=iterator).write(str(tmp_path / 'it'))
  expected = next(iterator)['image'].numpy()
  restored = iter(input_pipeline.build_dataset(options, descriptor, is_training=True, seed=3))
  tf.train.Checkpoint(train_iterator=restored).read(prefix).assert_consumed()
  np.testing.assert_array_equal(next(restored)['image'].numpy(), expected)


def test_unsaveable_pipeline_is_named_in_one_sentence():
  def host_op(x):
    return tf.py_function(lambda v: v + 1, [x], tf.int64)

  iterator = iter(tf.data.Dataset.range(4).map(host_op))
  problem = checkpointing.input_state_problem(iterator)
  assert problem == 'the input pipeline cannot be saved (EagerPyFunc is stateful).'
  assert 'tf.distribute iterators' in checkpointing.input_state_problem(None)


class _Trainer:
  def __init__(self, iterator):
    self.train_iterator = iterator


def test_start_up_check_stops_or_warns_as_chosen(capsys):
  bad = _Trainer(iter(tf.data.Dataset.range(4).map(
      lambda x: tf.py_function(lambda v: v, [x], tf.int64))))
  with pytest.raises(ValueError, match='--checkpoint_input_iterator=true, but the input '
                     'pipeline cannot be saved'):
    train_lib._check_input_state(bad, train_lib.INPUT_STATE_REQUIRED)
  assert not train_lib._check_input_state(bad, train_lib.INPUT_STATE_IF_POSSIBLE)
  assert 'The training input position is not checkpointed' in capsys.readouterr().err
  good = _Trainer(iter(tf.data.Dataset.range(4)))
  assert train_lib._check_input_state(good, train_lib.INPUT_STATE_REQUIRED)
  assert not train_lib._check_input_state(good, train_lib.INPUT_STATE_OFF)


def test_without_input_state_each_input_worker_builds_per_replica_batches(repo_root,
                                                                          dl2_reference):
  options = _released_coco_options(repo_root, dl2_reference)  # Global batch 2.
  per_worker = train_lib._training_input(train_lib._default_dataset_fn, options, per_worker=True)
  assert callable(per_worker)
  context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                       num_replicas_in_sync=2)
  assert per_worker(context).element_spec['image'].shape.as_list() == [1, 65, 65, 3]
  # With the input position saved, one Dataset of global batches (split by the trainer).
  global_batches = train_lib._training_input(train_lib._default_dataset_fn, options,
                                             per_worker=False)
  assert global_batches.element_spec['image'].shape.as_list() == [2, 65, 65, 3]


def test_trainer_reads_per_replica_batches_from_a_dataset_function():
  from kmax_tf.training import trainer as trainer_lib
  from tests.training import standins
  config = standins.make_config(steps=2)
  contexts = []

  def dataset_fn(input_context):
    contexts.append(input_context)
    return standins.make_dataset(input_context.get_per_replica_batch_size(4))

  with tf.distribute.OneDeviceStrategy('/cpu:0').scope():
    trainer = trainer_lib.Trainer(standins.TinyModel(), standins.ToyLoss(), dataset_fn,
                                  config.trainer_options.solver_options,
                                  trainer_lib.orbit.utils.create_global_step(),
                                  checkpointable_input=False)
  assert trainer.train_iterator is None  # Not checkpointable: tf.distribute's iterator.
  assert [(c.num_input_pipelines, c.num_replicas_in_sync) for c in contexts] == [(1, 1)]
  trainer.train(tf.constant(2))
  assert int(trainer.global_step.numpy()) == 2
