"""Builds the kMaX-DeepLab training loss from an experiment config.

Mirrors how DeepLab2's trainer builds its loss: the weights and top-k fractions
come from `trainer_options.loss_options`, the contrastive sampling settings from
`model_options.max_deeplab`, and the class layout from the dataset. Like
DeepLab2's loss builder, `semantic_sample_k` is not forwarded, so the semantic
loss always uses every pixel.
"""

from typing import Dict, List, Optional, Sequence

import tensorflow as tf

from kmax_tf import common
from kmax_tf.losses import max_deeplab_loss

# Loss fields of LossOptions that only other DeepLab2 meta-architectures use.
_UNSUPPORTED_LOSSES = ('center_loss', 'regression_loss', 'motion_loss', 'next_regression_loss',
                       'depth_loss')


class KMaXDeepLabLoss:
  """`loss(y_true, y_pred) -> {name: float32 [B]}` including `total_loss`.

  Values are per sample and already weighted; the trainer averages them over
  the global batch. `sampled_indices` (optional, see `MaXDeepLabLoss`) replays
  recorded contrastive-loss pixel samples.
  """

  def __init__(self, loss: max_deeplab_loss.MaXDeepLabLoss):
    self._loss = loss

  @property
  def loss_names(self) -> List[str]:
    """Every key of the returned dict, `total_loss` last."""
    return self._loss.loss_names + [common.TOTAL_LOSS]

  @property
  def auxiliary_output_number(self) -> int:
    return self._loss.auxiliary_output_number

  def __call__(self, y_true: Dict[str, tf.Tensor], y_pred: Dict[str, tf.Tensor],
               sampled_indices: Optional[Sequence[tf.Tensor]] = None
               ) -> Dict[str, tf.Tensor]:
    losses = self._loss(y_true, y_pred, sampled_indices=sampled_indices)
    losses[common.TOTAL_LOSS] = max_deeplab_loss.total_loss(losses)
    return losses


def _weight_and_top_k(loss_options, field: str):
  if not loss_options.HasField(field):
    return 0.0, 1.0
  single = getattr(loss_options, field)
  return single.weight, single.top_k_percent


def build_loss(config, descriptor=None, *, num_auxiliary_outputs: int = 6,
               pixel_sampler: Optional[max_deeplab_loss.PixelSampler] = None
               ) -> KMaXDeepLabLoss:
  """Builds the loss of an ExperimentOptions config.

  Args:
    config: config_pb2.ExperimentOptions.
    descriptor: the dataset descriptor (num_classes, ignore_label,
      class_has_instances_list); by default the one of
      `config.train_dataset_options`. Pass the eval dataset's for eval losses.
    num_auxiliary_outputs: auxiliary outputs of the model (kMaX: one per
      transformer decoder layer, 6); 0 for the evaluation loss.
    pixel_sampler: optional replacement of the Gumbel-top-k pixel sampler.

  Returns:
    KMaXDeepLabLoss.

  Raises:
    ValueError: if the config asks for losses other than MaX-DeepLab's.
  """
  loss_options = config.trainer_options.loss_options
  unsupported = [name for name in _UNSUPPORTED_LOSSES if loss_options.HasField(name)]
  if unsupported:
    raise ValueError(f'trainer_options.loss_options sets {", ".join(unsupported)}, which the '
                     'kMaX-DeepLab loss does not support (Panoptic-/ViP-DeepLab losses).')
  if not any(loss_options.HasField(name) for name in
             ('pq_style_loss', 'mask_id_cross_entropy_loss', 'instance_discrimination_loss')):
    raise ValueError('trainer_options.loss_options must set at least one of pq_style_loss, '
                     'mask_id_cross_entropy_loss, instance_discrimination_loss.')
  if descriptor is None:
    from kmax_tf.data import dataset_descriptors  # Imported late: only needed here.
    descriptor = dataset_descriptors.descriptor_from_options(config.train_dataset_options)
  if num_auxiliary_outputs < 0:
    raise ValueError(f'num_auxiliary_outputs must be >= 0, got {num_auxiliary_outputs}.')

  pq_weight, _ = _weight_and_top_k(loss_options, 'pq_style_loss')
  mask_id_weight, mask_id_top_k = _weight_and_top_k(loss_options, 'mask_id_cross_entropy_loss')
  instance_weight, instance_top_k = _weight_and_top_k(loss_options,
                                                      'instance_discrimination_loss')
  semantic_weight, semantic_top_k = _weight_and_top_k(loss_options, 'semantic_loss')
  max_deeplab = config.model_options.max_deeplab
  loss = max_deeplab_loss.MaXDeepLabLoss(
      num_classes=descriptor.num_classes,
      ignore_label=descriptor.ignore_label,
      thing_class_ids=tuple(descriptor.class_has_instances_list),
      pq_style_loss_weight=pq_weight,
      mask_id_cross_entropy_loss_weight=mask_id_weight,
      mask_id_cross_entropy_top_k_percent=mask_id_top_k,
      instance_discrimination_loss_weight=instance_weight,
      instance_discrimination_top_k_percent=instance_top_k,
      semantic_loss_weight=semantic_weight,
      semantic_top_k_percent=semantic_top_k,
      instance_discrimination_sample_k=max_deeplab.instance_discrimination_sample_k,
      instance_discrimination_sample_temperature=(
          max_deeplab.instance_discrimination_sample_temperature),
      auxiliary_output_number=num_auxiliary_outputs,
      pixel_sampler=pixel_sampler)
  return KMaXDeepLabLoss(loss)
