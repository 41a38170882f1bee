"""Orbit evaluator: panoptic quality, mIoU, mask AP and prediction pictures.

Per evaluation sample (batch 1 per replica, as DeepLab2) the model runs with
`training=False`; its panoptic / semantic predictions (and, for mask AP, the
semantic and instance score maps) at the padded eval crop are cropped to the
resized image and resized (nearest, align corners) to the original label
size, then compared with the raw labels (DeepLab2's `undo_preprocessing`).
Mask AP (`evaluator_options.compute_mask_ap`) is accumulated on the host with
pycocotools, as DeepLab2's `PanopticInstanceAveragePrecision`. The first
`num_vis_samples` (at most MAX_VIS_SAMPLES) samples are drawn as image |
ground truth | prediction rows into `<save_dir>/predictions_step<step>.png`
and TensorBoard (`save_dir`: `override_save_dir`, else `<model_dir>/vis`).
DeepLab2's `save_predictions` / `save_raw_predictions` files (per-sample
pictures, raw predictions, the official panoptic submission) are written by
`prediction_saving.PredictionSaver`. With `decode_groundtruth_label: false`
(a test split) there are no metrics: the evaluation only writes predictions
and returns no logs, as DeepLab2.
"""

import os
from typing import Dict, List, Optional

import numpy as np
import orbit
import tensorflow as tf
from absl import logging

from kmax_tf import common
from kmax_tf.data import preprocessing
from kmax_tf.training import prediction_saving
from kmax_tf.training import visualization

MAX_VIS_SAMPLES = 4
_VIS_KEY = 'visualization'
_MASK_AP_KEY = 'mask_ap'
_SAVE_KEY = 'save'


def undo_image_preprocessing(image: tf.Tensor, resized_size, raw_size) -> tf.Tensor:
  cropped = image[:, :resized_size[0], :resized_size[1]]
  return tf.compat.v1.image.resize(cropped, raw_size, method=tf.image.ResizeMethod.BILINEAR,
                                   align_corners=True)


class Evaluator(orbit.StandardEvaluator):
  """DeepLab2-style evaluator (construct inside `strategy.scope()`)."""

  def __init__(self, config, model, global_step: tf.Variable, model_dir: str,
               eval_dataset, descriptor=None):
    """Initializes the evaluator.

    Args:
      config: `config_pb2.ExperimentOptions` (evaluator_options,
        eval_dataset_options).
      model: keras model; `model(images, training=False)` returns a dict with
        `common.PRED_PANOPTIC_KEY` and `common.PRED_SEMANTIC_KEY` int [B, H, W].
      global_step: the training step variable (names the picture).
      model_dir: experiment directory; pictures go to `<model_dir>/vis`.
      eval_dataset: batched evaluation dataset (keys of the evaluation sample
        generator: image, resized_image, size_raw, panoptic_raw, semantic_raw,
        is_crowd_raw).
      descriptor: DatasetDescriptor; default from eval_dataset_options.
    """
    from kmax_tf.evaluation import mask_ap
    from kmax_tf.evaluation import mean_iou
    from kmax_tf.evaluation import panoptic_quality_metric
    if descriptor is None:
      from kmax_tf.data import dataset_descriptors
      descriptor = dataset_descriptors.descriptor_from_options(config.eval_dataset_options)
    self._strategy = tf.distribute.get_strategy()
    options = config.evaluator_options
    super().__init__(orbit.utils.make_distributed_dataset(self._strategy, eval_dataset),
                     orbit.StandardEvaluatorOptions(use_tf_function=options.use_tf_function))
    self._model = model
    self._global_step = global_step
    self._descriptor = descriptor
    self._vis_dir = (options.override_save_dir if options.HasField('override_save_dir')
                     else os.path.join(model_dir, 'vis'))
    self._num_vis = min(options.num_vis_samples, MAX_VIS_SAMPLES)
    self._compute_miou = options.compute_miou
    self._pq = panoptic_quality_metric.PanopticQualityMetric(
        descriptor.num_classes, descriptor.ignore_label, descriptor.panoptic_label_divisor,
        descriptor.class_has_instances_list, variant=options.panoptic_quality_variant)
    self._miou = mean_iou.MeanIoUMetric(descriptor.num_classes, descriptor.ignore_label)
    self._detailed_ap = options.detailed_ap_metrics
    self._mask_ap = None
    if options.compute_mask_ap:
      thing_classes = [index for index, has_instances
                       in enumerate(descriptor.class_has_instances_list) if has_instances]
      self._mask_ap = mask_ap.MaskAP(descriptor.num_classes, descriptor.ignore_label,
                                     descriptor.panoptic_label_divisor, thing_classes)
    self._vis_rows: List[np.ndarray] = []
    self.last_picture: Optional[str] = None
    self._has_labels = config.eval_dataset_options.decode_groundtruth_label
    self.saver = prediction_saving.PredictionSaver(options, descriptor, self._vis_dir)

  def eval_begin(self):
    self._pq.reset_state()
    self._miou.reset_state()
    if self._mask_ap is not None:
      self._mask_ap.reset_state()
    self._vis_rows = []
    self.saver.begin()

  def eval_step(self, iterator):
    outputs = self._strategy.run(self._replica_step, args=(next(iterator),))
    return tf.nest.map_structure(self._strategy.experimental_local_results, outputs)

  def _replica_step(self, inputs):
    outputs = self._model(inputs[common.IMAGE], training=False)
    raw_size = [inputs[common.GT_SIZE_RAW][0, 0], inputs[common.GT_SIZE_RAW][0, 1]]
    resized_size = [tf.shape(inputs[common.RESIZED_IMAGE])[1],
                    tf.shape(inputs[common.RESIZED_IMAGE])[2]]

    def undo(key):
      return preprocessing.undo_preprocessing(outputs[key], resized_size, raw_size)

    panoptic = undo(common.PRED_PANOPTIC_KEY)
    step_outputs = {}
    if self.saver.active:
      step_outputs[_SAVE_KEY] = self._outputs_to_save(inputs, outputs, panoptic, undo,
                                                      resized_size, raw_size)
    if common.GT_PANOPTIC_RAW not in inputs:  # No labels (decode_groundtruth_label: false).
      return step_outputs
    gt_panoptic = inputs[common.GT_PANOPTIC_RAW]
    self._pq.update_state(gt_panoptic, panoptic, inputs.get(common.GT_IS_CROWD_RAW))
    if self._compute_miou:
      self._miou.update_state(inputs[common.GT_SEMANTIC_RAW], undo(common.PRED_SEMANTIC_KEY))
    if self._mask_ap is not None:
      is_crowd = inputs.get(common.GT_IS_CROWD_RAW, tf.zeros_like(gt_panoptic, tf.bool))
      step_outputs[_MASK_AP_KEY] = (
          gt_panoptic, panoptic, undo(common.PRED_SEMANTIC_SCORES_KEY),
          undo(common.PRED_INSTANCE_SCORES_KEY), is_crowd)
    if self._num_vis:
      image = undo_image_preprocessing(inputs[common.IMAGE], resized_size, raw_size)
      step_outputs[_VIS_KEY] = (image, gt_panoptic, panoptic)
    return step_outputs

  def _outputs_to_save(self, inputs, outputs, panoptic, undo, resized_size, raw_size):
    """The maps `PredictionSaver.add` needs, at the input image size."""
    saved = {common.PRED_PANOPTIC_KEY: panoptic,
             common.PRED_SEMANTIC_KEY: undo(common.PRED_SEMANTIC_KEY)}
    if common.IMAGE_NAME in inputs:
      saved[common.IMAGE_NAME] = inputs[common.IMAGE_NAME]
    if self.saver.writes_instances or self.saver.num_samples:
      for key in (common.PRED_INSTANCE_KEY, common.PRED_INSTANCE_SCORES_KEY,
                  common.PRED_SEMANTIC_SCORES_KEY):
        if key in outputs:
          saved[key] = undo(key)
    if self.saver.num_samples and common.GT_PANOPTIC_RAW in inputs:
      saved[common.IMAGE] = undo_image_preprocessing(inputs[common.IMAGE], resized_size,
                                                     raw_size)
      saved[common.GT_PANOPTIC_RAW] = inputs[common.GT_PANOPTIC_RAW]
      saved[common.GT_SEMANTIC_RAW] = inputs[common.GT_SEMANTIC_RAW]
    return saved

  def _save_predictions(self, replica_outputs):
    """replica_outputs: key -> tuple of per-replica batched tensors."""
    keys = list(replica_outputs)
    for replica in range(len(replica_outputs[keys[0]])):
      batch = {key: replica_outputs[key][replica].numpy() for key in keys}
      for index in range(batch[keys[0]].shape[0]):
        self.saver.add({key: value[index] for key, value in batch.items()})

  def eval_reduce(self, state=None, step_outputs=None):
    if step_outputs and _SAVE_KEY in step_outputs:
      self._save_predictions(step_outputs[_SAVE_KEY])
    if step_outputs and _MASK_AP_KEY in step_outputs:
      # One tuple per replica-local result; each holds a batch of images.
      for gt, pred, semantic_scores, instance_scores, is_crowd in zip(
          *step_outputs[_MASK_AP_KEY]):
        self._mask_ap.update_state(gt.numpy(), pred.numpy(), semantic_scores.numpy(),
                                   instance_scores.numpy(), is_crowd.numpy())
    if not step_outputs or _VIS_KEY not in step_outputs:
      return state
    images, gts, preds = step_outputs[_VIS_KEY]
    for image, gt, pred in zip(images, gts, preds):
      for index in range(image.shape[0]):
        if len(self._vis_rows) >= self._num_vis:
          return state
        self._vis_rows.append(visualization.prediction_row(
            image[index].numpy(), gt[index].numpy(), pred[index].numpy(),
            self._descriptor.colormap, self._descriptor.panoptic_label_divisor,
            self._descriptor.ignore_label))
    return state

  def eval_end(self, state=None) -> Dict[str, float]:
    self.saver.end()
    if not self._has_labels:
      return {}
    logs = dict(self._pq.summary_scalars())
    if self._compute_miou:
      logs.update(self._miou.summary_scalars())
    if self._mask_ap is not None:
      logs.update(self._mask_ap.summary_scalars(detailed=self._detailed_ap))
    if self._vis_rows:
      self._write_pictures()
    return logs

  def _write_pictures(self):
    step = int(self._global_step.numpy())
    picture = visualization.stack_rows(self._vis_rows)
    path = os.path.join(self._vis_dir, f'predictions_step{step}.png')
    visualization.write_png_atomic(path, picture)
    self.last_picture = path
    logging.info('Wrote %s', path)
    print(f'Predictions picture (image | ground truth | prediction): {path}', flush=True)
    rows = [tf.constant(row[None]) for row in self._vis_rows]
    for index, row in enumerate(rows):
      tf.summary.image(f'panoptic/sample_{index}', row, step=step)
