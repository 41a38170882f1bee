"""Writers for official submissions and raw predictions.

* `PanopticSubmissionWriter`: the COCO panoptic format (one RGB PNG per image,
  id = R + 256 * G + 256**2 * B, plus a JSON whose `segments_info` give the
  dataset's own category ids, mapped back from the contiguous training ids),
  and the Cityscapes panoptic format of cityscapesScripts (the same layout,
  Cityscapes label ids, string image ids). Its output is what
  `evaluation/panoptic_quality.py`, panopticapi and cityscapesScripts read.
* `write_raw_predictions`: DeepLab2's `save_raw_predictions` layout
  (`raw_semantic/<name>.png`, `raw_panoptic/<name>.png|.npy`), and
  `write_cityscapes_raw_instances` for its Cityscapes `raw_instance/` files.

Every file is written atomically and an existing file is never replaced
unless `overwrite=True`.
"""

import io
import json
import os
import re
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf
from PIL import Image

from kmax_tf import file_io
from kmax_tf import panoptic_rgb

COCO = 'coco'
CITYSCAPES = 'cityscapes'
_FORMATS = (COCO, CITYSCAPES)
_INSTANCES_PER_CATEGORY = 1000

TWO_CHANNEL_PNG = 'two_channel_png'
THREE_CHANNEL_PNG = 'three_channel_png'
TWO_CHANNEL_NUMPY_ARRAY = 'two_channel_numpy_array'


def png_bytes(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='PNG')
  return buffer.getvalue()


def _image_stem(image_name: str) -> str:
  if isinstance(image_name, bytes):
    image_name = image_name.decode('utf-8')
  stem = os.path.splitext(os.path.basename(str(image_name)))[0]
  if not stem:
    raise ValueError(f'Cannot derive a file name from image name {image_name!r}.')
  return stem


class PanopticSubmissionWriter:
  """Writes panoptic predictions in COCO or Cityscapes panoptic format.

  Example:
    writer = PanopticSubmissionWriter('out', label_divisor=256, ignore_label=0,
                                      thing_class_ids=..., dataset_category_ids=...)
    writer.add('000000000139.jpg', panoptic_pred)   # int32 [H, W]
    writer.write_json()                             # out/panoptic_pred.json
  """

  def __init__(self, output_dir: str, *, label_divisor: int, ignore_label: int,
               thing_class_ids: Sequence[int], num_classes: int,
               dataset_category_ids: Optional[Sequence[int]] = None,
               class_names: Optional[Sequence[str]] = None, output_format: str = COCO,
               png_folder_name: str = 'panoptic_pred',
               json_file_name: str = 'panoptic_pred.json', overwrite: bool = False):
    """Args.

    Args:
      output_dir: root folder; PNGs go to `output_dir/png_folder_name`.
      label_divisor: panoptic label divisor of the predictions.
      ignore_label: contiguous class id of VOID (written as id 0).
      thing_class_ids: contiguous ids of classes with instances.
      num_classes: number of contiguous classes.
      dataset_category_ids: contiguous id -> dataset category id (the
        descriptor's `dataset_category_ids`); None for identity.
      class_names: optional names for the JSON categories.
      output_format: 'coco' (integer image ids when the name is numeric) or
        'cityscapes' (image id = name without `_leftImg8bit`; stuff segment
        id = label id, thing segment id = label id * 1000 + instance).
      png_folder_name: PNG sub-folder.
      json_file_name: JSON file name inside `output_dir`.
      overwrite: allow replacing existing files.
    """
    if output_format not in _FORMATS:
      raise ValueError(f'output_format must be one of {_FORMATS}, got {output_format!r}.')
    if dataset_category_ids is not None and len(dataset_category_ids) != num_classes:
      raise ValueError(f'dataset_category_ids has {len(dataset_category_ids)} entries, expected '
                       f'num_classes={num_classes}.')
    if class_names is not None and len(class_names) != num_classes:
      raise ValueError(f'class_names has {len(class_names)} entries, expected {num_classes}.')
    self.output_dir = output_dir
    self.png_folder = os.path.join(output_dir, png_folder_name)
    self.json_path = os.path.join(output_dir, json_file_name)
    self.label_divisor = label_divisor
    self.ignore_label = ignore_label
    self.thing_class_ids = frozenset(int(c) for c in thing_class_ids)
    self.num_classes = num_classes
    self.category_ids = (list(range(num_classes)) if dataset_category_ids is None
                         else [int(c) for c in dataset_category_ids])
    self.class_names = list(class_names) if class_names is not None else [
        str(c) for c in range(num_classes)]
    self.output_format = output_format
    self.overwrite = overwrite
    self._annotations: List[Dict[str, Any]] = []
    self._image_ids = set()
    if not overwrite and tf.io.gfile.exists(self.json_path):
      raise FileExistsError(f'{self.json_path} already exists; refusing to overwrite it.')

  def _image_id(self, stem: str):
    if self.output_format == CITYSCAPES:
      return re.sub(r'_leftImg8bit$', '', stem)
    return int(stem) if stem.isdigit() else stem

  def categories(self) -> List[Dict[str, Any]]:
    """The JSON "categories" list (VOID excluded)."""
    return [{'id': self.category_ids[c], 'name': self.class_names[c],
             'isthing': int(c in self.thing_class_ids)}
            for c in range(self.num_classes) if c != self.ignore_label]

  def add(self, image_name: str, panoptic: np.ndarray) -> Dict[str, Any]:
    """Writes one image's PNG and records its annotation.

    Args:
      image_name: the input image's file name (e.g. '000000000139.jpg' or
        'frankfurt_000000_000294_leftImg8bit.png').
      panoptic: int [H, W], class * label_divisor + instance (contiguous ids).

    Returns:
      The annotation dict (image_id, file_name, segments_info).
    """
    panoptic = np.asarray(panoptic)
    if panoptic.ndim != 2:
      raise ValueError(f'panoptic must be [H, W], got shape {panoptic.shape} for {image_name}.')
    stem = _image_stem(image_name)
    image_id = self._image_id(stem)
    if image_id in self._image_ids:
      raise ValueError(f'Image id {image_id!r} (from {image_name}) was already added.')
    labels, inverse = np.unique(panoptic.astype(np.int64), return_inverse=True)
    inverse = inverse.reshape(panoptic.shape)
    classes = labels // self.label_divisor
    bad = classes[((classes < 0) | (classes >= self.num_classes)) & (classes != self.ignore_label)]
    if bad.size:
      raise ValueError(f'{image_name}: class {bad[0]} outside [0, {self.num_classes}).')
    segment_ids = np.zeros(len(labels), np.int64)
    segments_info = []
    rank = {}
    for k, class_id in enumerate(classes.tolist()):
      if class_id == self.ignore_label:
        continue
      category_id = self.category_ids[class_id]
      is_thing = class_id in self.thing_class_ids
      instance_rank = rank.get(class_id, 0)
      rank[class_id] = instance_rank + 1
      if instance_rank >= _INSTANCES_PER_CATEGORY:
        raise ValueError(f'{image_name}: more than {_INSTANCES_PER_CATEGORY} segments of class '
                         f'{class_id}.')
      if self.output_format == CITYSCAPES and not is_thing and instance_rank == 0:
        segment_id = category_id
      else:
        segment_id = category_id * _INSTANCES_PER_CATEGORY + instance_rank
      if segment_id <= 0 or segment_id >= (1 << 24):
        raise ValueError(f'{image_name}: class {class_id} (category id {category_id}) gives '
                         f'segment id {segment_id}, which the PNG format cannot hold.')
      segment_ids[k] = segment_id
      mask = inverse == k
      rows = np.flatnonzero(mask.any(axis=1))
      columns = np.flatnonzero(mask.any(axis=0))
      segments_info.append({
          'id': int(segment_id), 'category_id': int(category_id), 'iscrowd': 0,
          'isthing': int(is_thing), 'area': int(mask.sum()),
          'bbox': [int(columns[0]), int(rows[0]), int(columns[-1] - columns[0] + 1),
                   int(rows[-1] - rows[0] + 1)]})
    ids = segment_ids[inverse]
    file_name = stem + '.png' if self.output_format == COCO else f'{image_id}.png'
    file_io.write_bytes_atomic(os.path.join(self.png_folder, file_name),
                               panoptic_rgb.encode_png(ids), overwrite=self.overwrite)
    annotation = {'image_id': image_id, 'file_name': file_name, 'segments_info': segments_info}
    self._annotations.append(annotation)
    self._image_ids.add(image_id)
    return annotation

  def write_json(self) -> str:
    """Writes the JSON (annotations + categories); returns its path."""
    content = {'annotations': self._annotations, 'categories': self.categories()}
    file_io.write_text_atomic(self.json_path, json.dumps(content), overwrite=self.overwrite)
    return self.json_path


def _to_eval_ids(labels: np.ndarray, train_id_to_eval_id: Optional[Sequence[int]]) -> np.ndarray:
  """DeepLab2's train-id -> eval-id conversion (ids without an entry become 0)."""
  if train_id_to_eval_id is None:
    return labels
  table = np.zeros(max(256, len(train_id_to_eval_id), int(labels.max(initial=0)) + 1),
                   np.int64)
  table[:len(train_id_to_eval_id)] = train_id_to_eval_id
  return table[labels]


def write_raw_predictions(output_dir: str, image_name: str, *,
                          semantic_pred: Optional[np.ndarray] = None,
                          panoptic_pred: Optional[np.ndarray] = None,
                          label_divisor: Optional[int] = None,
                          train_id_to_eval_id: Optional[Sequence[int]] = None,
                          raw_panoptic_format: str = TWO_CHANNEL_PNG,
                          overwrite: bool = False) -> Dict[str, str]:
  """Saves raw predictions as DeepLab2's `save_raw_predictions` does.

  Args:
    output_dir: root; files go to `raw_semantic/` and `raw_panoptic/`.
    image_name: input file name; its stem names the outputs.
    semantic_pred: optional int [H, W] semantic prediction.
    panoptic_pred: optional int [H, W], class * label_divisor + instance.
    label_divisor: required with `panoptic_pred`.
    train_id_to_eval_id: optional contiguous id -> dataset id table (DeepLab2's
      `convert_raw_to_eval_ids`; ids beyond the table become 0).
    raw_panoptic_format: 'two_channel_png' (R class, G instance),
      'three_channel_png' (R class, G instance // 256, B instance % 256) or
      'two_channel_numpy_array' (int [H, W, 3] .npy, channels class, instance,
      0).
    overwrite: allow replacing existing files.

  Returns:
    {'semantic': path, 'panoptic': path} for what was written.
  """
  stem = _image_stem(image_name)
  written = {}
  if semantic_pred is not None:
    semantic = _to_eval_ids(np.asarray(semantic_pred, np.int64), train_id_to_eval_id)
    if semantic.min(initial=0) < 0 or semantic.max(initial=0) > 255:
      raise ValueError(f'{image_name}: semantic ids must be in [0, 255] for the PNG.')
    path = os.path.join(output_dir, 'raw_semantic', stem + '.png')
    file_io.write_bytes_atomic(path, png_bytes(semantic.astype(np.uint8)), overwrite=overwrite)
    written['semantic'] = path
  if panoptic_pred is not None:
    if not label_divisor:
      raise ValueError('label_divisor is required to write panoptic predictions.')
    panoptic = np.asarray(panoptic_pred)
    semantic = _to_eval_ids(panoptic.astype(np.int64) // label_divisor, train_id_to_eval_id)
    instance = panoptic.astype(np.int64) % label_divisor
    output = np.zeros(panoptic.shape + (3,), panoptic.dtype)
    output[..., 0] = semantic
    if raw_panoptic_format == TWO_CHANNEL_PNG:
      if semantic.max(initial=0) > 255 or instance.max(initial=0) > 255:
        raise ValueError(f'{image_name}: class or instance ids above 255 do not fit the '
                         "'two_channel_png' format; use 'two_channel_numpy_array'.")
      output[..., 1] = instance
    elif raw_panoptic_format == THREE_CHANNEL_PNG:
      if semantic.max(initial=0) > 255 or instance.max(initial=0) > 65535:
        raise ValueError(f'{image_name}: class ids above 255 or instance ids above 65535 do not '
                         "fit the 'three_channel_png' format; use 'two_channel_numpy_array'.")
      output[..., 1] = instance // 256
      output[..., 2] = instance % 256
    elif raw_panoptic_format == TWO_CHANNEL_NUMPY_ARRAY:
      output[..., 1] = instance
    else:
      raise ValueError(f'Unknown raw_panoptic_format {raw_panoptic_format!r}; expected one of '
                       f'{(TWO_CHANNEL_PNG, THREE_CHANNEL_PNG, TWO_CHANNEL_NUMPY_ARRAY)}.')
    folder = os.path.join(output_dir, 'raw_panoptic')
    if raw_panoptic_format == TWO_CHANNEL_NUMPY_ARRAY:
      buffer = io.BytesIO()
      np.save(buffer, output)
      path = os.path.join(folder, stem + '.npy')
      file_io.write_bytes_atomic(path, buffer.getvalue(), overwrite=overwrite)
    else:
      path = os.path.join(folder, stem + '.png')
      file_io.write_bytes_atomic(path, png_bytes(output.astype(np.uint8)), overwrite=overwrite)
    written['panoptic'] = path
  return written


def write_cityscapes_raw_instances(output_dir: str, image_name: str, *, semantic_pred: np.ndarray,
                                   instance_pred: np.ndarray, instance_score_map: np.ndarray,
                                   semantic_score_map: np.ndarray,
                                   thing_class_ids: Sequence[int], ignore_label: int,
                                   train_id_to_eval_id: Optional[Sequence[int]] = None,
                                   overwrite: bool = False) -> str:
  """Cityscapes instance-level raw predictions, as DeepLab2 writes them.

  One binary PNG per (thing class, instance id) under
  `raw_instance/instance_masks/<name>_class_<c>_instance_<i>.png` and a text
  file `raw_instance/<name>.txt` with lines
  `instance_masks/<png> <class> <score>`, score = mean instance score * mean
  semantic score over the mask (cityscapesScripts' instance format).

  Args:
    output_dir: root folder.
    image_name: input file name; its stem names the outputs.
    semantic_pred: int [H, W] contiguous class ids.
    instance_pred: int [H, W] instance ids.
    instance_score_map: float [H, W].
    semantic_score_map: float [H, W], score of the predicted class.
    thing_class_ids: contiguous ids of thing classes.
    ignore_label: contiguous ignore label.
    train_id_to_eval_id: optional contiguous -> Cityscapes label id table; when
      given, classes are written as label ids and the ignore label becomes 0.
    overwrite: allow replacing existing files.

  Returns:
    The text file's path.
  """
  stem = _image_stem(image_name)
  semantic = np.asarray(semantic_pred, np.int64)
  instance = np.asarray(instance_pred, np.int64)
  instance_scores = np.asarray(instance_score_map)
  semantic_scores = np.asarray(semantic_score_map)
  shapes = {semantic.shape, instance.shape, instance_scores.shape, semantic_scores.shape}
  if len(shapes) != 1 or semantic.ndim != 2:
    raise ValueError(f'{image_name}: semantic, instance and score maps must share one [H, W] '
                     f'shape, got {sorted(shapes)}.')
  things = set(int(c) for c in thing_class_ids)
  if train_id_to_eval_id is not None:
    semantic = _to_eval_ids(semantic, train_id_to_eval_id)
    things = {int(train_id_to_eval_id[c]) for c in things}
    ignore_label = 0
  lines = []
  folder = os.path.join(output_dir, 'raw_instance')
  for class_id in np.unique(semantic).tolist():
    if class_id == ignore_label or class_id not in things:
      continue
    class_mask = semantic == class_id
    for instance_id in np.unique(instance[class_mask]).tolist():
      mask = class_mask & (instance == instance_id)
      score = (float(np.mean(instance_scores[mask], dtype=np.float64)) *
               float(np.mean(semantic_scores[mask], dtype=np.float64)))
      mask_name = f'instance_masks/{stem}_class_{class_id}_instance_{instance_id}.png'
      file_io.write_bytes_atomic(os.path.join(folder, mask_name),
                                 png_bytes(mask.astype(np.uint8)), overwrite=overwrite)
      lines.append(f'{mask_name} {class_id} {score:f}\n')
  text_path = os.path.join(folder, stem + '.txt')
  file_io.write_text_atomic(text_path, ''.join(lines), overwrite=overwrite)
  return text_path
