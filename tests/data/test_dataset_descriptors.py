"""Dataset descriptors hold DeepLab2's values; user datasets come from JSON."""

import json

import pytest

from kmax_tf.data import dataset_descriptors
from kmax_tf.protos import dataset_pb2


@pytest.mark.parametrize(
    'name, num_classes, ignore, divisor, things, slots, stride, semantic, keep', [
    ('coco_panoptic', 134, 0, 256, tuple(range(1, 81)), 128, 4, True, 0.8),
    ('cityscapes_panoptic', 19, 255, 1000, tuple(range(11, 19)), 256, 2, False, 0.8),
    ('ade20k_panoptic', 151, 0, 1000, None, 128, 4, True, 1.0),
])
def test_deeplab2_values(name, num_classes, ignore, divisor, things, slots, stride, semantic, keep):
  descriptor = dataset_descriptors.get_dataset_descriptor(name)
  assert descriptor.num_classes == num_classes
  assert descriptor.ignore_label == ignore
  assert descriptor.panoptic_label_divisor == divisor
  if things is not None:
    assert descriptor.class_has_instances_list == things
  assert descriptor.num_mask_slots == slots
  assert descriptor.high_resolution_output_stride == stride
  assert descriptor.use_auxiliary_semantic_decoder is semantic
  assert descriptor.transformer_decoder_drop_path_keep_prob == keep
  assert len(descriptor.class_names) == len(descriptor.colormap) == num_classes


def test_coco_names_and_category_ids():
  coco = dataset_descriptors.get_dataset_descriptor('coco_panoptic')
  assert coco.class_names[1] == 'person' and coco.dataset_category_ids[1] == 1
  # The last COCO panoptic category (rug-merged) has the original id 200.
  assert coco.dataset_category_ids[-1] == 200
  assert coco.splits_to_sizes == {'train': 118287, 'val': 5000, 'test': 40670}
  assert coco.is_thing(80) and not coco.is_thing(81)
  assert len(coco.stuff_class_ids) == 53


def test_ade20k_things_and_cityscapes_label_ids():
  ade = dataset_descriptors.get_dataset_descriptor('ade20k_panoptic')
  assert len(ade.class_has_instances_list) == 100
  assert ade.class_names[1] == 'wall' and not ade.is_thing(1)
  cityscapes = dataset_descriptors.get_dataset_descriptor('cityscapes_panoptic')
  assert cityscapes.class_names[11] == 'person'
  assert cityscapes.dataset_category_ids[11] == 24
  assert cityscapes.splits_to_sizes['val_fine'] == 500


def test_unknown_dataset_lists_registered():
  with pytest.raises(ValueError, match='coco_panoptic.*dataset_descriptor_file'):
    dataset_descriptors.get_dataset_descriptor('mapillary')


def _user_descriptor(**changes):
  values = dict(name='my_data', num_classes=3, ignore_label=0, panoptic_label_divisor=1000,
                class_has_instances_list=[1], class_names=['void', 'cat', 'grass'],
                colormap=[[0, 0, 0], [255, 0, 0], [0, 255, 0]],
                splits_to_sizes={'train': 10, 'val': 2}, num_mask_slots=16)
  values.update(changes)
  return values


def test_user_descriptor_file_from_options(tmp_path):
  path = tmp_path / 'my_data.json'
  path.write_text(json.dumps(_user_descriptor()))
  options = dataset_pb2.DatasetOptions(dataset='my_data', dataset_descriptor_file=str(path))
  descriptor = dataset_descriptors.descriptor_from_options(options)
  assert descriptor.num_mask_slots == 16
  assert descriptor.high_resolution_output_stride == 4  # the COCO-like default
  assert descriptor.stuff_class_ids == (2,)
  options = dataset_pb2.DatasetOptions(dataset='other', dataset_descriptor_file=str(path))
  with pytest.raises(ValueError, match="does not match the name 'my_data'"):
    dataset_descriptors.descriptor_from_options(options)


@pytest.mark.parametrize('changes, message', [
    (dict(class_names=['void', 'cat']), 'class_names has 2 entries'),
    (dict(class_has_instances_list=[7]), 'invalid class ids'),
    (dict(high_resolution_output_stride=8), 'must be 4 or 2'),
    (dict(colour='red'), "unknown dataset descriptor field"),
])
def test_bad_user_descriptor(tmp_path, changes, message):
  path = tmp_path / 'bad.json'
  path.write_text(json.dumps(_user_descriptor(**changes)))
  with pytest.raises(ValueError, match=message) as error:
    dataset_descriptors.load_descriptor_file(path)
  assert str(path) in str(error.value)


def test_missing_and_broken_descriptor_files(tmp_path):
  with pytest.raises(ValueError, match='Cannot read dataset descriptor file'):
    dataset_descriptors.load_descriptor_file(tmp_path / 'none.json')
  path = tmp_path / 'broken.json'
  path.write_text('{"name": ')
  with pytest.raises(ValueError, match='not valid JSON'):
    dataset_descriptors.load_descriptor_file(path)


def test_descriptor_file_on_a_remote_file_system():
  import tensorflow as tf
  local = dataset_descriptors.get_dataset_descriptor('coco_panoptic')
  source = dataset_descriptors._DESCRIPTOR_DIR / dataset_descriptors._REGISTERED['coco_panoptic']
  path = 'ram://descriptors/coco_like.json'
  tf.io.gfile.makedirs('ram://descriptors')
  tf.io.gfile.copy(str(source), path, overwrite=True)
  assert dataset_descriptors.load_descriptor_file(path) == local
  with pytest.raises(ValueError, match='Cannot read dataset descriptor file ram://descriptors/no'):
    dataset_descriptors.load_descriptor_file('ram://descriptors/no.json')
