"""Dataset descriptors: everything kmax_tf knows about a dataset, as data.

DeepLab2 hard-codes several kMaX settings by testing the dataset name
(`'cityscapes' in name` picks 256 mask slots, output stride 2, no auxiliary
semantic decoder). Here they are fields of the descriptor, so a user's own
dataset is declared by a JSON file (`dataset_descriptor_file` in the dataset
options) without touching code. The registered descriptors are JSON files in
`kmax_tf/data/descriptors/`, holding DeepLab2's values.
"""

import dataclasses
import json
import os
import pathlib
from typing import Dict, Optional, Tuple

from kmax_tf import file_io

# 'none': no panoptic submission (e.g. ADE20K, whose first category id is 0).
SUBMISSION_FORMATS = ('coco', 'cityscapes', 'none')

_DESCRIPTOR_DIR = pathlib.Path(__file__).resolve().parent / 'descriptors'

# Registered name -> descriptor file name in _DESCRIPTOR_DIR.
_REGISTERED = {
    'coco_panoptic': 'coco_panoptic.json',
    'cityscapes_panoptic': 'cityscapes_panoptic.json',
    'ade20k_panoptic': 'ade20k_panoptic.json',
    'kmax_demo_panoptic': 'kmax_demo_panoptic.json',
}


@dataclasses.dataclass(frozen=True)
class DatasetDescriptor:
  """Static facts of a panoptic dataset and its kMaX defaults.

  Class ids are contiguous training ids in [0, num_classes). Panoptic labels are
  `semantic_id * panoptic_label_divisor + instance_id`.

  Attributes:
    name: dataset name, e.g. 'coco_panoptic'.
    num_classes: number of semantic classes, including a void class where the
      dataset has one (COCO 134, ADE20K 151; Cityscapes 19 with void = 255).
    ignore_label: semantic id of void / ignored pixels.
    panoptic_label_divisor: the divisor of panoptic ids.
    class_has_instances_list: the thing class ids.
    class_names: a name per class id.
    colormap: an (r, g, b) per class id, for visualisation.
    splits_to_sizes: number of images per split.
    dataset_category_ids: the dataset's own category id of each class id, for
      official-format exports (COCO category ids, Cityscapes label ids); None
      when they are the same as the class ids.
    num_mask_slots: kMaX mask slots (object queries).
    high_resolution_output_stride: output stride of pixel-space outputs, 4 or 2.
    use_auxiliary_semantic_decoder: whether the semantic head has its own
      decoder (DeepLab2: on for COCO and ADE20K, off for Cityscapes).
    transformer_decoder_drop_path_keep_prob: drop-path keep probability of the
      kMaX transformer decoder during training.
    submission_format: layout of the official test-server files an evaluation
      with `save_raw_predictions` writes: 'coco' (COCO panoptic PNG + JSON) or
      'cityscapes' (cityscapesScripts' panoptic PNG + JSON with string image
      ids, plus the `raw_instance/` instance files) or 'none' (raw
      predictions only).
  """

  name: str
  num_classes: int
  ignore_label: int
  panoptic_label_divisor: int
  class_has_instances_list: Tuple[int, ...]
  class_names: Tuple[str, ...]
  colormap: Tuple[Tuple[int, int, int], ...]
  splits_to_sizes: Dict[str, int]
  dataset_category_ids: Optional[Tuple[int, ...]] = None
  num_mask_slots: int = 128
  high_resolution_output_stride: int = 4
  use_auxiliary_semantic_decoder: bool = True
  transformer_decoder_drop_path_keep_prob: float = 0.8
  submission_format: str = 'coco'

  def __post_init__(self):
    problems = []
    if self.num_classes <= 0:
      problems.append(f'num_classes must be positive, got {self.num_classes}')
    if len(self.class_names) != self.num_classes:
      problems.append(f'class_names has {len(self.class_names)} entries, expected '
                      f'num_classes={self.num_classes}')
    if len(self.colormap) != self.num_classes:
      problems.append(f'colormap has {len(self.colormap)} entries, expected '
                      f'num_classes={self.num_classes}')
    bad_things = [c for c in self.class_has_instances_list
                  if not 0 <= c < self.num_classes or c == self.ignore_label]
    if bad_things:
      problems.append(f'class_has_instances_list has invalid class ids {bad_things}')
    if self.dataset_category_ids is not None and (
        len(self.dataset_category_ids) != self.num_classes):
      problems.append(f'dataset_category_ids has {len(self.dataset_category_ids)} entries, '
                      f'expected num_classes={self.num_classes}')
    if self.panoptic_label_divisor <= 0:
      problems.append('panoptic_label_divisor must be positive')
    if self.high_resolution_output_stride not in (2, 4):
      problems.append('high_resolution_output_stride must be 4 or 2, got '
                      f'{self.high_resolution_output_stride}')
    if self.num_mask_slots <= 0:
      problems.append(f'num_mask_slots must be positive, got {self.num_mask_slots}')
    if not 0.0 < self.transformer_decoder_drop_path_keep_prob <= 1.0:
      problems.append('transformer_decoder_drop_path_keep_prob must be in (0, 1]')
    if self.submission_format not in SUBMISSION_FORMATS:
      problems.append(f'submission_format must be one of {SUBMISSION_FORMATS}, got '
                      f'{self.submission_format!r}')
    if problems:
      raise ValueError(f'Invalid dataset descriptor {self.name!r}: ' + '; '.join(problems))

  def is_thing(self, class_id: int) -> bool:
    return class_id in self.class_has_instances_list

  @property
  def thing_class_ids(self) -> Tuple[int, ...]:
    return self.class_has_instances_list

  @property
  def stuff_class_ids(self) -> Tuple[int, ...]:
    things = set(self.class_has_instances_list)
    return tuple(c for c in range(self.num_classes)
                 if c not in things and c != self.ignore_label)

  def to_json_dict(self) -> dict:
    return dataclasses.asdict(self)


_FIELDS = {f.name for f in dataclasses.fields(DatasetDescriptor)}
_REQUIRED = {f.name for f in dataclasses.fields(DatasetDescriptor)
             if f.default is dataclasses.MISSING}


def descriptor_from_dict(values: dict, source: str = '<dict>') -> DatasetDescriptor:
  """Builds a descriptor from a JSON-style dict; `source` names it in errors."""
  unknown = sorted(set(values) - _FIELDS)
  if unknown:
    raise ValueError(f'{source}: unknown dataset descriptor field(s) {unknown}; '
                     f'valid fields: {sorted(_FIELDS)}')
  missing = sorted(_REQUIRED - set(values))
  if missing:
    raise ValueError(f'{source}: missing dataset descriptor field(s) {missing}')
  values = dict(values)
  values['class_has_instances_list'] = tuple(int(c) for c in values['class_has_instances_list'])
  values['class_names'] = tuple(str(n) for n in values['class_names'])
  values['colormap'] = tuple(tuple(int(v) for v in rgb) for rgb in values['colormap'])
  values['splits_to_sizes'] = {str(k): int(v) for k, v in values['splits_to_sizes'].items()}
  if values.get('dataset_category_ids') is not None:
    values['dataset_category_ids'] = tuple(int(c) for c in values['dataset_category_ids'])
  try:
    return DatasetDescriptor(**values)
  except ValueError as error:
    raise ValueError(f'{source}: {error}') from None


def load_descriptor_file(path) -> DatasetDescriptor:
  """Reads a dataset descriptor JSON file."""
  path = os.fspath(path)
  try:
    text = file_io.read_bytes(path).decode('utf-8')
  except (OSError, UnicodeDecodeError) as error:
    raise ValueError(f'Cannot read dataset descriptor file {path}: {error}') from None
  try:
    values = json.loads(text)
  except json.JSONDecodeError as error:
    raise ValueError(f'Dataset descriptor file {path} is not valid JSON: {error}') from None
  if not isinstance(values, dict):
    raise ValueError(f'Dataset descriptor file {path} must hold a JSON object')
  return descriptor_from_dict(values, source=str(path))


def registered_dataset_names() -> Tuple[str, ...]:
  return tuple(sorted(_REGISTERED))


def get_dataset_descriptor(name: str) -> DatasetDescriptor:
  """Returns the registered descriptor called `name`."""
  if name not in _REGISTERED:
    raise ValueError(f'Unknown dataset {name!r}. Registered datasets: '
                     f'{", ".join(registered_dataset_names())}; or declare your own with '
                     '`dataset_descriptor_file` in the dataset options.')
  return load_descriptor_file(_DESCRIPTOR_DIR / _REGISTERED[name])


def descriptor_from_options(dataset_options) -> DatasetDescriptor:
  """The descriptor for a `DatasetOptions` proto.

  `dataset_descriptor_file`, when set, wins over the registered name; its
  `name` must then equal `dataset` if both are given.
  """
  if dataset_options.HasField('dataset_descriptor_file'):
    descriptor = load_descriptor_file(dataset_options.dataset_descriptor_file)
    if dataset_options.dataset and dataset_options.dataset != descriptor.name:
      raise ValueError(
          f'dataset {dataset_options.dataset!r} does not match the name '
          f'{descriptor.name!r} in dataset_descriptor_file '
          f'{dataset_options.dataset_descriptor_file}')
    return descriptor
  if not dataset_options.dataset:
    raise ValueError('Dataset options name no dataset: set `dataset` (one of '
                     f'{", ".join(registered_dataset_names())}) or `dataset_descriptor_file`.')
  return get_dataset_descriptor(dataset_options.dataset)
