"""What an evaluation writes to disk besides metrics: DeepLab2's evaluator outputs.

`evaluator_options` decide, as in DeepLab2's trainer/vis.py; files go to the
save folder (`override_save_dir`, else `<model_dir>/vis`):

* `save_predictions`: for the first `num_vis_samples` labelled samples of an
  evaluation (index i counted from 0), DeepLab2's pictures
  `%06d_image.png`, `%06d_semantic_prediction.png`, `%06d_semantic_label.png`,
  `%06d_instance_prediction.png`, `%06d_panoptic_prediction.png`,
  `%06d_panoptic_label.png` and `%06d_semantic_error.png` (white where the
  prediction differs from a non-void label).
* `save_raw_predictions`: for every sample, `raw_semantic/<name>.png` and
  `raw_panoptic/<name>.png|.npy` in `raw_panoptic_format`, <name> being the
  image file name without extension. With `convert_raw_to_eval_ids` the class
  ids are the dataset's own (the descriptor's `dataset_category_ids`; ids
  without an entry, such as Cityscapes' 255, become 0). When the descriptor's
  `submission_format` is 'cityscapes', also `raw_instance/` (cityscapesScripts'
  instance format). Beyond DeepLab2, which leaves the step to panopticapi's
  converter, the official panoptic submission comes out directly:
  `panoptic_cocoformat/<name>.png` and `panoptic_cocoformat.json` (COCO or
  Cityscapes panoptic format, dataset category ids).

Every file is written atomically; a later evaluation replaces the files of
an earlier one with the same names (each checkpoint's evaluation rewrites
them, as DeepLab2 does).
"""

import os
from typing import Dict, List, Optional

import numpy as np
from absl import logging

from kmax_tf import coloring
from kmax_tf import common
from kmax_tf import file_io
from kmax_tf.evaluation import prediction_writers

RAW_PANOPTIC_FORMATS = (prediction_writers.TWO_CHANNEL_PNG, prediction_writers.THREE_CHANNEL_PNG,
                        prediction_writers.TWO_CHANNEL_NUMPY_ARRAY)
SUBMISSION_FOLDER = 'panoptic_cocoformat'
SUBMISSION_JSON = 'panoptic_cocoformat.json'

# DeepLab2's picture names (trainer/vis.py), formatted with the sample index.
IMAGE_FORMAT = '%06d_image.png'
SEMANTIC_PREDICTION_FORMAT = '%06d_semantic_prediction.png'
SEMANTIC_LABEL_FORMAT = '%06d_semantic_label.png'
INSTANCE_PREDICTION_FORMAT = '%06d_instance_prediction.png'
PANOPTIC_PREDICTION_FORMAT = '%06d_panoptic_prediction.png'
PANOPTIC_LABEL_FORMAT = '%06d_panoptic_label.png'
SEMANTIC_ERROR_FORMAT = '%06d_semantic_error.png'


def _instance_colors(instance: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3]: a fixed pseudo-random color per instance id, black for 0."""
  instance = np.asarray(instance, np.int64)
  colors = (instance[..., None] * np.array([97, 57, 211], np.int64) + 64) % 256
  colors[instance == 0] = 0
  return colors.astype(np.uint8)


class PredictionSaver:
  """Writes the files `evaluator_options` ask for, one evaluation sample at a time.

  Call `begin()` before an evaluation, `add(sample)` per sample and `end()`
  after it.
  """

  def __init__(self, options, descriptor, save_dir: str):
    """Args.

    Args:
      options: `evaluator_pb2.EvaluatorOptions`.
      descriptor: the evaluation dataset's `DatasetDescriptor`.
      save_dir: the save folder.

    Raises:
      ValueError: for an unknown `raw_panoptic_format`.
    """
    self._descriptor = descriptor
    self._save_dir = save_dir
    self.num_samples = options.num_vis_samples if options.save_predictions else 0
    self.save_raw = options.save_raw_predictions
    self._raw_format = options.raw_panoptic_format
    if self.save_raw and self._raw_format not in RAW_PANOPTIC_FORMATS:
      raise ValueError(f'evaluator_options.raw_panoptic_format={self._raw_format!r} is not one '
                       f'of {RAW_PANOPTIC_FORMATS}.')
    self._eval_ids = None
    if options.convert_raw_to_eval_ids and descriptor.dataset_category_ids is not None:
      self._eval_ids = list(descriptor.dataset_category_ids)
    self.writes_instances = self.save_raw and descriptor.submission_format == 'cityscapes'
    self._submission: Optional[prediction_writers.PanopticSubmissionWriter] = None
    self._sample_index = 0
    self.written: List[str] = []

  @property
  def active(self) -> bool:
    return bool(self.num_samples) or self.save_raw

  def wants_pictures(self) -> bool:
    """Whether the next labelled sample is drawn (`save_predictions`)."""
    return self._sample_index < self.num_samples

  def begin(self):
    self._sample_index = 0
    self.written = []
    self._submission = None
    if self.save_raw and self._descriptor.submission_format != 'none':
      descriptor = self._descriptor
      self._submission = prediction_writers.PanopticSubmissionWriter(
          self._save_dir, label_divisor=descriptor.panoptic_label_divisor,
          ignore_label=descriptor.ignore_label, thing_class_ids=descriptor.thing_class_ids,
          num_classes=descriptor.num_classes,
          dataset_category_ids=descriptor.dataset_category_ids,
          class_names=descriptor.class_names, output_format=descriptor.submission_format,
          png_folder_name=SUBMISSION_FOLDER, json_file_name=SUBMISSION_JSON, overwrite=True)

  def add(self, sample: Dict[str, np.ndarray]):
    """Writes one sample's files.

    Args:
      sample: numpy arrays at the input image size [H, W]:
        `common.PRED_PANOPTIC_KEY`, `common.PRED_SEMANTIC_KEY`, and when
        present `common.PRED_INSTANCE_KEY`, `common.PRED_INSTANCE_SCORES_KEY`,
        `common.PRED_SEMANTIC_SCORES_KEY` (float), `common.IMAGE` (float
        [H, W, 3]), `common.GT_PANOPTIC_RAW`, `common.GT_SEMANTIC_RAW`; and
        `common.IMAGE_NAME` (bytes or str; needed for raw predictions).
    """
    if self.save_raw:
      self._add_raw(sample)
    if self.wants_pictures() and common.GT_PANOPTIC_RAW in sample:
      self._add_pictures(sample)
      self._sample_index += 1

  def _add_raw(self, sample):
    name = sample.get(common.IMAGE_NAME)
    if name is None:
      raise ValueError('evaluator_options.save_raw_predictions needs the image file names, '
                       f'but the evaluation samples have no {common.IMAGE_NAME!r}.')
    panoptic = sample[common.PRED_PANOPTIC_KEY]
    written = prediction_writers.write_raw_predictions(
        self._save_dir, name, semantic_pred=sample[common.PRED_SEMANTIC_KEY],
        panoptic_pred=panoptic, label_divisor=self._descriptor.panoptic_label_divisor,
        train_id_to_eval_id=self._eval_ids, raw_panoptic_format=self._raw_format,
        overwrite=True)
    self.written.extend(written.values())
    if self.writes_instances:
      self.written.append(prediction_writers.write_cityscapes_raw_instances(
          self._save_dir, name, semantic_pred=sample[common.PRED_SEMANTIC_KEY],
          instance_pred=sample[common.PRED_INSTANCE_KEY],
          instance_score_map=sample[common.PRED_INSTANCE_SCORES_KEY],
          semantic_score_map=sample[common.PRED_SEMANTIC_SCORES_KEY],
          thing_class_ids=self._descriptor.thing_class_ids,
          ignore_label=self._descriptor.ignore_label, train_id_to_eval_id=self._eval_ids,
          overwrite=True))
    if self._submission is not None:
      annotation = self._submission.add(name, panoptic)
      self.written.append(os.path.join(self._submission.png_folder, annotation['file_name']))

  def _add_pictures(self, sample):
    descriptor = self._descriptor
    index = self._sample_index
    colormap, divisor, ignore = (descriptor.colormap, descriptor.panoptic_label_divisor,
                                 descriptor.ignore_label)

    def semantic_colors(semantic):
      return coloring.colorize_panoptic(np.asarray(semantic, np.int64) * divisor, colormap,
                                             divisor, ignore)

    label = np.asarray(sample[common.GT_SEMANTIC_RAW])
    semantic = np.asarray(sample[common.PRED_SEMANTIC_KEY])
    error = ((semantic != label) & (label != ignore)).astype(np.uint8) * 255
    pictures = {
        SEMANTIC_PREDICTION_FORMAT: semantic_colors(semantic),
        SEMANTIC_LABEL_FORMAT: semantic_colors(label),
        PANOPTIC_PREDICTION_FORMAT: coloring.colorize_panoptic(
            sample[common.PRED_PANOPTIC_KEY], colormap, divisor, ignore),
        PANOPTIC_LABEL_FORMAT: coloring.colorize_panoptic(
            sample[common.GT_PANOPTIC_RAW], colormap, divisor, ignore),
        SEMANTIC_ERROR_FORMAT: error,
    }
    if common.IMAGE in sample:
      pictures[IMAGE_FORMAT] = np.clip(np.round(sample[common.IMAGE]), 0, 255).astype(np.uint8)
    if common.PRED_INSTANCE_KEY in sample:
      pictures[INSTANCE_PREDICTION_FORMAT] = _instance_colors(sample[common.PRED_INSTANCE_KEY])
    for name_format, picture in pictures.items():
      path = os.path.join(self._save_dir, name_format % index)
      file_io.write_bytes_atomic(path, prediction_writers.png_bytes(picture), overwrite=True)
      self.written.append(path)

  def end(self) -> List[str]:
    """Writes the submission JSON; returns the paths written during this evaluation."""
    if self._submission is not None:
      self.written.append(self._submission.write_json())
    if self.written:
      logging.info('Wrote %d prediction files to %s', len(self.written), self._save_dir)
      print(f'Saved {len(self.written)} prediction files to {self._save_dir}', flush=True)
    return self.written
