"""The MaX-DeepLab / kMaX-DeepLab training loss, as DeepLab2 computes it.

Terms (each a per-sample float32 [B] value, already multiplied by its weight):
  * `pq_style_loss_class_term`: alpha-balanced cross-entropy of the mask-slot
    classes against the Hungarian-matched ground truth, positives weighted by
    the matched dice, negatives by the slot's overlap with void.
  * `pq_style_loss_mask_dice_term`: dice of the matched masks weighted by the
    matched class probability.
  * `mask_id_cross_entropy_loss`: per-pixel cross-entropy over mask slots.
  * `instance_discrimination_loss`: pixel-contrastive loss (CMT-DeepLab) on
    Gumbel-top-k sampled pixels, or MaX-DeepLab's mask-average version when no
    sample count is set.
  * `semantic_loss`: top-k softmax cross-entropy of the semantic head.
Deep supervision: every auxiliary output gets the first four terms under the
names `aux_{i}<term>` (no separator, DeepLab2's naming), computed with the
matching of the final output.
"""

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence

import tensorflow as tf

from kmax_tf import common
from kmax_tf.losses import ground_truth
from kmax_tf.losses import hungarian_matching
from kmax_tf.losses import loss_functions

# Cost given to padded / void matching entries; far outside the range of the
# real costs (products of probabilities, in [-1, 0]).
_MATCHING_NEGATIVE_CONSTANT = -999.0
_MATCHING_POSITIVE_CONSTANT = 999.0
# Added to logits that a softmax must ignore.
_SOFTMAX_MASKING_CONSTANT = -99999.0
# Keeps dynamic loss weights away from zero, which the non-zero averaging would
# otherwise treat as "no loss here".
_MIN_DYNAMIC_WEIGHT = 1e-5
_SIMILARITY_EPSILON = 1e-5

# (sample_logits float32 [B, P], k, output_index) -> int32 [B, k] pixel indices.
PixelSampler = Callable[[tf.Tensor, int, int], tf.Tensor]

MAIN_OUTPUT_TERMS = (common.PQ_STYLE_LOSS_CLASS_TERM, common.PQ_STYLE_LOSS_MASK_DICE_TERM,
                     common.MASK_ID_CROSS_ENTROPY_LOSS, common.INSTANCE_DISCRIMINATION_LOSS)


def gumbel_top_k_sample(logits: tf.Tensor, k: int, output_index: int = 0) -> tf.Tensor:
  """Draws k distinct indices per row from softmax(logits), Gumbel-top-k trick.

  Args:
    logits: float32 [B, P].
    k: number of indices, <= P.
    output_index: unused; part of the `PixelSampler` signature.

  Returns:
    int32 [B, k].
  """
  del output_index
  uniform = tf.random.uniform(tf.shape(logits), 0.0, 1.0, dtype=logits.dtype)
  gumbel = -tf.math.log(-tf.math.log(uniform))
  return tf.math.top_k(logits + gumbel, k).indices


def dice_similarity(masks_gt: tf.Tensor, masks_pred: tf.Tensor) -> tf.Tensor:
  """Soft dice between every ground-truth and predicted mask.

  Args:
    masks_gt: float32 [B, P, M] binary masks.
    masks_pred: float32 [B, P, N] soft masks.

  Returns:
    float32 [B, M, N].
  """
  intersection = tf.einsum('bpm,bpn->bmn', masks_gt, masks_pred)
  half_sum = (tf.reduce_sum(masks_gt, axis=1)[:, :, tf.newaxis] +
              tf.reduce_sum(masks_pred, axis=1)[:, tf.newaxis, :]) / 2
  return intersection / (half_sum + _SIMILARITY_EPSILON)


def padded_square_matching(cost: tf.Tensor, mask_present: tf.Tensor) -> tf.Tensor:
  """DeepLab2's matching: absent masks and padding get constants, square solve.

  Args:
    cost: float32 [B, M, N], cost of giving ground-truth mask m slot n.
    mask_present: float32 [B, M], 1 for present masks.

  Returns:
    int32 [B, max(M, N)], the slot (or padding column >= N) of each mask row
    (rows >= M are padding), a permutation.
  """
  num_masks, num_slots = cost.shape[1], cost.shape[2]
  size = max(num_masks, num_slots)
  # Absent masks must not take real slots from present ones: with padding
  # columns (M > N) they are pushed off the real slots, else any slot will do.
  absent_cost = (_MATCHING_NEGATIVE_CONSTANT if num_slots >= num_masks else
                 _MATCHING_POSITIVE_CONSTANT)
  present = mask_present[:, :, tf.newaxis]
  cost = cost * present + (1.0 - present) * absent_cost
  cost = tf.pad(cost, [[0, 0], [0, size - num_masks], [0, size - num_slots]],
                constant_values=_MATCHING_NEGATIVE_CONSTANT)
  return hungarian_matching.linear_sum_assignment(cost)


def match_masks_to_slots(cost: tf.Tensor, mask_present: tf.Tensor) -> tf.Tensor:
  """Same matching of present masks as `padded_square_matching`, cheaper.

  When no batch element has more present masks than slots, the padded optimum
  puts every present mask on a real slot (a present mask on a padding column
  would push an absent mask onto a real slot at +999) and all other pairs
  cost constants, so solving for the present rows only and completing the
  permutation arbitrarily gives the same matching of present masks. Otherwise
  it falls back to the padded square problem.

  Args:
    cost: float32 [B, M, N].
    mask_present: float32 [B, M].

  Returns:
    int32 [B, max(M, N)], as `padded_square_matching`.
  """
  num_slots = cost.shape[2]
  size = max(cost.shape[1], num_slots)

  def present_rows_only():
    slot = hungarian_matching.linear_sum_assignment(cost, mask_present > 0.5)
    return hungarian_matching.complete_to_permutation(slot, size)

  enough_slots = tf.reduce_all(tf.reduce_sum(mask_present, axis=1) <= num_slots)
  return tf.cond(enough_slots, present_rows_only,
                 lambda: padded_square_matching(cost, mask_present))


@dataclasses.dataclass(frozen=True)
class SlotTargets:
  """The matched ground truth in slot order, P pixels, N slots, M masks.

  Slot n's target is the mask matched to it. DeepLab2 instead pads the logits
  to max(M, N) slots with -99999 and permutes them into mask order, once per
  decoder output; permuting the targets once gives the same losses. A mask
  matched to a padding slot (more present masks than slots) has that constant
  logit there and zero probability.

  Attributes:
    has_mask: bool [B, P], pixels with a mask (not void, not crowd).
    on_padding_slot: bool [B, P], pixels whose mask sits on a padding slot.
    one_hot: float32 [B, P, N], each pixel's matched slot; zero rows for the
      pixels without a mask or on a padding slot.
    slot_dice_weight: float32 [B, N], the dice weight of each slot's mask.
    padding_dice_loss: float32 [B], the weighted dice loss of the masks on
      padding slots, 1 - 1 / (area + 1) each, the same for every output.
  """

  has_mask: tf.Tensor
  on_padding_slot: tf.Tensor
  one_hot: tf.Tensor
  slot_dice_weight: tf.Tensor
  padding_dice_loss: tf.Tensor

  @classmethod
  def from_matching(cls, gt: ground_truth.MaskGroundTruth, slot_for_mask: tf.Tensor,
                    mask_dice_weight: tf.Tensor, num_slots: int) -> 'SlotTargets':
    """Builds the targets.

    Args:
      gt: the ground truth (M masks).
      slot_for_mask: int32 [B, max(M, N)], a permutation (see
        `padded_square_matching`).
      mask_dice_weight: float32 [B, M], the dice weight of each mask.
      num_slots: N.
    """
    num_masks = gt.pixel_mask_id_one_hot.shape[-1]
    size = max(num_masks, num_slots)
    has_mask = gt.pixel_mask_id >= 0
    pixel_slot = tf.where(
        has_mask, tf.gather(slot_for_mask, tf.maximum(gt.pixel_mask_id, 0), batch_dims=1), -1)
    mask_for_slot = tf.argsort(slot_for_mask, axis=-1)[:, :num_slots]  # Inverse permutation.
    padded_weight = tf.pad(mask_dice_weight, [[0, 0], [0, size - num_masks]])
    mask_on_padding = slot_for_mask[:, :num_masks] >= num_slots
    smooth = loss_functions.DICE_SMOOTH
    padding_dice_loss = tf.reduce_sum(
        tf.where(mask_on_padding, 1.0 - smooth / (gt.mask_area[:, :, 0] + smooth), 0.0) *
        mask_dice_weight, axis=-1)
    return cls(has_mask=has_mask,
               on_padding_slot=pixel_slot >= num_slots,
               one_hot=tf.one_hot(pixel_slot, num_slots, dtype=tf.float32),
               slot_dice_weight=tf.gather(padded_weight, mask_for_slot, batch_dims=1),
               padding_dice_loss=padding_dice_loss)

  def mask_dice_loss(self, mask_logits: tf.Tensor) -> tf.Tensor:
    """DeepLab2's weighted mask dice loss (unscaled), float32 [B].

    Args:
      mask_logits: float32 [B, P, N].
    """
    return (loss_functions.mask_dice_loss(self.one_hot, mask_logits, self.slot_dice_weight,
                                          tf.cast(self.has_mask, tf.float32)) +
            self.padding_dice_loss)

  def mask_id_cross_entropy(self, mask_logits: tf.Tensor, pixel_weights: tf.Tensor,
                            top_k_percent: float) -> tf.Tensor:
    """DeepLab2's per-pixel cross-entropy over slots (unweighted), float32 [B].

    Args:
      mask_logits: float32 [B, P, N].
      pixel_weights: float32 [B, P].
      top_k_percent: see `loss_functions.average_top_k`.
    """
    target_logit = tf.where(self.on_padding_slot, _SOFTMAX_MASKING_CONSTANT,
                            tf.reduce_sum(mask_logits * self.one_hot, axis=-1))
    return loss_functions.target_logit_cross_entropy(
        mask_logits, target_logit, self.has_mask, pixel_weights, top_k_percent)


def _flatten_pixels(tensor: tf.Tensor, num_pixels: int, name: str) -> tf.Tensor:
  if tensor.shape.rank != 4:
    raise ValueError(f'y_pred[{name!r}] must be [batch, height, width, channels], got shape '
                     f'{tensor.shape}.')
  return tf.reshape(tensor, [tf.shape(tensor)[0], num_pixels, tensor.shape[-1]])


class MaXDeepLabLoss:
  """Callable computing DeepLab2's MaX-DeepLab loss dict (without `total_loss`).

  A term is computed when its weight is > 0. Class ids are dataset ids; the
  number of thing + stuff classes, mask slots and `max_thing_id` are read from
  the input shapes at call time.
  """

  def __init__(self, *,
               num_classes: int,
               ignore_label: int,
               thing_class_ids: Sequence[int],
               pq_style_loss_weight: float = 0.0,
               mask_id_cross_entropy_loss_weight: float = 0.0,
               mask_id_cross_entropy_top_k_percent: float = 1.0,
               instance_discrimination_loss_weight: float = 0.0,
               instance_discrimination_top_k_percent: float = 1.0,
               semantic_loss_weight: float = 0.0,
               semantic_top_k_percent: float = 1.0,
               focal_loss_alpha: float = 0.75,
               instance_discrimination_sample_k: int = 0,
               instance_discrimination_sample_temperature: float = 0.6,
               instance_discrimination_temperature: float = 0.3,
               semantic_sample_k: int = 0,
               semantic_sample_temperature: float = 1.0,
               auxiliary_output_number: int = 0,
               pixel_sampler: Optional[PixelSampler] = None):
    """Configures the loss.

    Args:
      num_classes: dataset classes (semantic head channels), e.g. 134 for COCO.
      ignore_label: void class id.
      thing_class_ids: thing class ids.
      pq_style_loss_weight: weight of both PQ-style terms.
      mask_id_cross_entropy_loss_weight: weight of the mask-id cross-entropy.
      mask_id_cross_entropy_top_k_percent: fraction of pixels kept by it.
      instance_discrimination_loss_weight: weight of instance discrimination.
      instance_discrimination_top_k_percent: fraction of pixels kept by it.
      semantic_loss_weight: weight of the semantic cross-entropy.
      semantic_top_k_percent: fraction of pixels kept by it.
      focal_loss_alpha: weight of positive slots in the class term; the dice term
        is scaled by alpha / num_mask_slots to balance it.
      instance_discrimination_sample_k: pixels sampled for the pixel-contrastive
        loss; 0 selects the original mask-average loss. Larger than the number
        of output pixels means all pixels (DeepLab2 would fail there).
      instance_discrimination_sample_temperature: sampling favours small masks
        by (1 / area) ** temperature.
      instance_discrimination_temperature: softmax temperature of the feature
        similarities.
      semantic_sample_k: pixels sampled for the semantic loss; 0 uses every
        pixel, labels subsampled to the logits' size (DeepLab2's loss builder
        always uses 0).
      semantic_sample_temperature: like the instance discrimination one.
      auxiliary_output_number: number of auxiliary outputs, expected as a
        sequence of dicts under `y_pred['auxiliary_outputs_pred']`.
      pixel_sampler: replaces the Gumbel-top-k sampler of the contrastive loss,
        e.g. to replay recorded indices.
    """
    self._num_classes = int(num_classes)
    self._ignore_label = int(ignore_label)
    self._thing_class_ids = [int(c) for c in thing_class_ids]
    self._pq_style_loss_weight = float(pq_style_loss_weight)
    self._mask_id_weight = float(mask_id_cross_entropy_loss_weight)
    self._mask_id_top_k = float(mask_id_cross_entropy_top_k_percent)
    self._instance_weight = float(instance_discrimination_loss_weight)
    self._instance_top_k = float(instance_discrimination_top_k_percent)
    self._semantic_weight = float(semantic_loss_weight)
    self._semantic_top_k = float(semantic_top_k_percent)
    self._focal_loss_alpha = float(focal_loss_alpha)
    self._instance_sample_k = int(instance_discrimination_sample_k)
    self._instance_sample_temperature = float(instance_discrimination_sample_temperature)
    self._instance_temperature = float(instance_discrimination_temperature)
    self._semantic_sample_k = int(semantic_sample_k)
    self._semantic_sample_temperature = float(semantic_sample_temperature)
    self._auxiliary_output_number = int(auxiliary_output_number)
    self._pixel_sampler = pixel_sampler or gumbel_top_k_sample
    for name, value in (('mask_id_cross_entropy_top_k_percent', self._mask_id_top_k),
                        ('instance_discrimination_top_k_percent', self._instance_top_k),
                        ('semantic_top_k_percent', self._semantic_top_k)):
      if not 0.0 <= value <= 1.0:
        raise ValueError(f'{name} must lie in [0, 1], got {value}.')

  @property
  def auxiliary_output_number(self) -> int:
    return self._auxiliary_output_number

  @property
  def loss_names(self) -> List[str]:
    """Keys of the returned dict, in DeepLab2's insertion order."""
    main = []
    if self._instance_weight > 0:
      main.append(common.INSTANCE_DISCRIMINATION_LOSS)
    if self._pq_style_loss_weight > 0:
      main.append(common.PQ_STYLE_LOSS_MASK_DICE_TERM)
    if self._mask_id_weight > 0:
      main.append(common.MASK_ID_CROSS_ENTROPY_LOSS)
    if self._pq_style_loss_weight > 0:
      main.append(common.PQ_STYLE_LOSS_CLASS_TERM)
    names = list(main)
    for index in range(self._auxiliary_output_number):
      names += [f'aux_{index}{term}' for term in MAIN_OUTPUT_TERMS if term in main]
    if self._semantic_weight > 0:
      names.append(common.SEMANTIC_LOSS)
    return names

  def __call__(self, y_true: Dict[str, tf.Tensor], y_pred: Dict[str, tf.Tensor],
               sampled_indices: Optional[Sequence[tf.Tensor]] = None
               ) -> Dict[str, tf.Tensor]:
    """Computes the loss terms.

    Args:
      y_true: DeepLab2 ground truth: `semantic_gt` int [B, H, W],
        `thing_id_mask_gt` int [B, H, W], `thing_id_class_gt` [B, T],
        `semantic_loss_weight` float [B, H, W].
      y_pred: predictions at output size h x w with (H - 1) / (h - 1) an
        integer: `pixel_space_mask_logits` [B, h, w, N],
        `transformer_class_logits` [B, N, K + 1] (void last),
        `pixel_space_normalized_feature` [B, h, w, D], `semantic_logits`
        [B, hs, ws, num_classes], and `auxiliary_outputs_pred`, a sequence of
        dicts with the first three keys at h x w.
      sampled_indices: optional int32 [1 + num_aux, B, k] (or a sequence of
        [B, k]): the contrastive loss's pixel samples in call order (main
        output, then aux 0, 1, ...), used instead of drawing them.

    Returns:
      dict name -> float32 [B], ordered as `loss_names`.
    """
    self._check_keys(y_true, y_pred)
    outputs = [y_pred]
    if self._auxiliary_output_number:
      auxiliary = y_pred.get(common.PRED_AUXILIARY_OUTPUTS)
      if auxiliary is None or len(auxiliary) != self._auxiliary_output_number:
        got = 'none' if auxiliary is None else len(auxiliary)
        raise ValueError(
            f'The loss expects {self._auxiliary_output_number} auxiliary outputs under '
            f'y_pred[{common.PRED_AUXILIARY_OUTPUTS!r}], got {got}.')
      outputs += list(auxiliary)

    feature = y_pred[common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY]
    if feature.shape.rank != 4 or None in feature.shape[1:3]:
      raise ValueError('y_pred[pixel_space_normalized_feature] must be [batch, height, width, '
                       f'channels] with static height/width, got {feature.shape}.')
    output_hw = (feature.shape[1], feature.shape[2])
    num_pixels = output_hw[0] * output_hw[1]
    class_logits_shape = y_pred[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY].shape
    num_mask_slots = class_logits_shape[1]
    num_thing_stuff_classes = class_logits_shape[2] - 1
    stuff_ids = ground_truth.stuff_class_ids(
        num_thing_stuff_classes, self._thing_class_ids, self._ignore_label)

    features, mask_logits, class_logits = [], [], []
    for index, output in enumerate(outputs):
      where = 'y_pred' if index == 0 else f'auxiliary output {index - 1}'
      for key in (common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY,
                  common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY):
        if tuple(output[key].shape[1:3]) != output_hw:
          raise ValueError(f'{where}[{key!r}] has spatial size {output[key].shape[1:3]}, '
                           f'expected {output_hw} like pixel_space_normalized_feature.')
      features.append(_flatten_pixels(
          tf.cast(output[common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY], tf.float32),
          num_pixels, common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY))
      mask_logits.append(_flatten_pixels(
          tf.cast(output[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY], tf.float32),
          num_pixels, common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY))
      class_logits.append(tf.cast(output[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY], tf.float32))
      if mask_logits[-1].shape[-1] != num_mask_slots:
        raise ValueError(f'{where} has {mask_logits[-1].shape[-1]} mask logit channels but '
                         f'{num_mask_slots} transformer class logit slots.')

    gt = ground_truth.prepare_mask_ground_truth(
        y_true, output_hw, self._thing_class_ids, stuff_ids, self._ignore_label)
    per_output: List[Dict[str, tf.Tensor]] = [{} for _ in outputs]

    if self._instance_weight > 0:
      if sampled_indices is not None and len(sampled_indices) != len(outputs):
        raise ValueError(f'sampled_indices must hold {len(outputs)} index sets (main output '
                         f'and auxiliary outputs), got {len(sampled_indices)}.')
      for index, feature_flat in enumerate(features):
        indices = None if sampled_indices is None else sampled_indices[index]
        per_output[index][common.INSTANCE_DISCRIMINATION_LOSS] = (
            self._instance_discrimination(feature_flat, gt, index, indices) *
            self._instance_weight)

    if self._pq_style_loss_weight > 0 or self._mask_id_weight > 0:
      self._matched_terms(gt, mask_logits, class_logits, per_output)

    losses = dict(per_output[0])
    for index, terms in enumerate(per_output[1:]):
      losses.update((f'aux_{index}{term}', terms[term])
                    for term in MAIN_OUTPUT_TERMS if term in terms)
    if self._semantic_weight > 0:
      losses[common.SEMANTIC_LOSS] = self._semantic_loss(y_true, y_pred, gt) * self._semantic_weight
    # DeepLab2's insertion order (it fixes the summation order of the total).
    return {name: losses[name] for name in self.loss_names}

  def _check_keys(self, y_true: Dict[str, tf.Tensor], y_pred: Dict[str, tf.Tensor]) -> None:
    needed_true = [common.GT_SEMANTIC_KEY, common.GT_THING_ID_MASK_KEY,
                   common.GT_THING_ID_CLASS_KEY]
    needed_pred = [common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY,
                   common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY,
                   common.PRED_TRANSFORMER_CLASS_LOGITS_KEY]
    if self._semantic_weight > 0:
      needed_true.append(common.SEMANTIC_LOSS_WEIGHT_KEY)
      needed_pred.append(common.PRED_SEMANTIC_LOGITS_KEY)
    for what, needed, given in (('y_true', needed_true, y_true), ('y_pred', needed_pred, y_pred)):
      missing = [key for key in needed if key not in given]
      if missing:
        raise ValueError(f'The MaX-DeepLab loss needs {what} keys {missing}; got '
                         f'{sorted(given)}.')

  def _instance_discrimination(self, feature: tf.Tensor, gt: ground_truth.MaskGroundTruth,
                               output_index: int,
                               indices: Optional[tf.Tensor]) -> tf.Tensor:
    """Instance discrimination loss of one output, float32 [B] (unweighted)."""
    if self._instance_sample_k <= 0:
      return self._mask_average_instance_discrimination(feature, gt)
    num_pixels = feature.shape[1]
    if indices is None:
      sample_logits = (tf.math.log(gt.pixel_inverse_mask_area) *
                       self._instance_sample_temperature)
      sample_logits += (1.0 - gt.pixel_non_void_mask) * _SOFTMAX_MASKING_CONSTANT
      indices = self._pixel_sampler(sample_logits, min(self._instance_sample_k, num_pixels),
                                    output_index)
    indices = tf.cast(indices, tf.int32)
    sampled_ids = tf.gather(gt.pixel_mask_id, indices, batch_dims=1)
    sampled_feature = tf.gather(feature, indices, batch_dims=1)
    per_pixel = loss_functions.self_similarity_cross_entropy(
        sampled_feature, sampled_ids, self._instance_temperature,
        num_ids=gt.pixel_mask_id_one_hot.shape[-1])
    return loss_functions.average_top_k(per_pixel, self._instance_top_k)

  def _mask_average_instance_discrimination(self, feature: tf.Tensor,
                                            gt: ground_truth.MaskGroundTruth) -> tf.Tensor:
    """MaX-DeepLab's original loss: pixels vs. mask-average features, things only."""
    mask_feature = (tf.einsum('bpd,bpm->bmd', feature, gt.pixel_mask_id_one_hot) /
                    tf.maximum(gt.mask_area, 1.0))
    mask_feature = tf.math.l2_normalize(mask_feature, axis=-1)
    similarity = tf.einsum('bpd,bmd->bpm', feature, mask_feature) / self._instance_temperature
    present = gt.mask_non_void[:, tf.newaxis, :]
    similarity = present * similarity + (1.0 - present) * _SOFTMAX_MASKING_CONSTANT
    return loss_functions.soft_cross_entropy(
        gt.pixel_mask_id_one_hot, similarity, gt.pixel_thing_mask, self._instance_top_k)

  def _matched_terms(self, gt: ground_truth.MaskGroundTruth, mask_logits: List[tf.Tensor],
                     class_logits: List[tf.Tensor],
                     per_output: List[Dict[str, tf.Tensor]]) -> None:
    """PQ-style and mask-id terms of every output, matched on the final output."""
    num_masks = gt.pixel_mask_id_one_hot.shape[-1]
    num_slots = mask_logits[0].shape[-1]
    size = max(num_masks, num_slots)
    non_void_pixels = gt.pixel_non_void_mask[:, :, tf.newaxis]

    mask_probs = tf.nn.softmax(mask_logits[0], axis=-1)
    mask_similarity = dice_similarity(gt.pixel_mask_id_one_hot, mask_probs * non_void_pixels)
    class_probs = tf.nn.softmax(class_logits[0], axis=-1)[:, :, :-1]
    class_similarity = tf.einsum('bmk,bnk->bmn', gt.mask_class_one_hot, class_probs)

    # Rows: ground-truth masks, columns: mask slots.
    present = gt.mask_non_void[:, :, tf.newaxis]
    slot_for_mask = match_masks_to_slots(
        tf.stop_gradient(-mask_similarity * class_similarity), gt.mask_non_void)
    permutation = tf.cast(hungarian_matching.assignment_matrix(slot_for_mask, size), tf.float32)
    matched = permutation[:, :num_masks, :num_slots] * present

    matched_mask_dice = tf.stop_gradient(tf.reduce_max(mask_similarity * matched, axis=-2))
    matched_class_prob = tf.stop_gradient(tf.reduce_max(class_similarity * matched, axis=-1))
    # A mask matched to a padding slot counts as slot 0, as in DeepLab2.
    matched_slot = tf.where(slot_for_mask[:, :num_masks] < num_slots,
                            slot_for_mask[:, :num_masks], 0)

    dice_weight = gt.mask_non_void * tf.maximum(matched_class_prob, _MIN_DYNAMIC_WEIGHT)
    targets = SlotTargets.from_matching(gt, slot_for_mask, dice_weight, num_slots)
    dice_scale = self._pq_style_loss_weight * self._focal_loss_alpha / num_slots
    for index, logits in enumerate(mask_logits):
      if self._pq_style_loss_weight > 0:
        per_output[index][common.PQ_STYLE_LOSS_MASK_DICE_TERM] = (
            targets.mask_dice_loss(logits) * dice_scale)
      if self._mask_id_weight > 0:
        per_output[index][common.MASK_ID_CROSS_ENTROPY_LOSS] = (
            targets.mask_id_cross_entropy(logits, gt.pixel_non_void_mask, self._mask_id_top_k) *
            self._mask_id_weight)

    if self._pq_style_loss_weight <= 0:
      return
    slot_class_one_hot = tf.einsum(
        'bmn,bmk->bnk', tf.one_hot(matched_slot, num_slots, dtype=tf.float32),
        gt.mask_class_one_hot)
    positive = tf.cast(tf.equal(tf.reduce_max(slot_class_one_hot, axis=-1), 1.0), tf.float32)
    negative = 1.0 - positive
    void_pixels = 1.0 - non_void_pixels
    void_ratio = tf.stop_gradient(
        tf.einsum('bp,bpn->bn', void_pixels[:, :, 0], mask_probs) /
        (tf.reduce_sum(mask_probs, axis=1) + _SIMILARITY_EPSILON))
    class_weight = (positive * tf.maximum(matched_mask_dice, _MIN_DYNAMIC_WEIGHT) +
                    negative * tf.maximum(void_ratio, _MIN_DYNAMIC_WEIGHT))
    class_target = tf.concat([slot_class_one_hot, negative[:, :, tf.newaxis]], axis=-1)
    for index, logits in enumerate(class_logits):
      per_output[index][common.PQ_STYLE_LOSS_CLASS_TERM] = (
          loss_functions.focal_cross_entropy(class_target, logits, class_weight,
                                             self._focal_loss_alpha) *
          self._pq_style_loss_weight)

  def _semantic_loss(self, y_true: Dict[str, tf.Tensor], y_pred: Dict[str, tf.Tensor],
                     gt: ground_truth.MaskGroundTruth) -> tf.Tensor:
    """Top-k softmax cross-entropy of `semantic_logits`, float32 [B] (unweighted)."""
    logits = tf.cast(y_pred[common.PRED_SEMANTIC_LOGITS_KEY], tf.float32)
    if logits.shape.rank != 4 or None in logits.shape[1:]:
      raise ValueError('y_pred[semantic_logits] must be [batch, height, width, classes] with '
                       f'static sizes, got {logits.shape}.')
    labels = y_true[common.GT_SEMANTIC_KEY]
    weights = tf.cast(y_true[common.SEMANTIC_LOSS_WEIGHT_KEY], tf.float32)
    pred_hw = tuple(logits.shape[1:3])
    if tuple(labels.shape[1:3]) != pred_hw:
      labels = loss_functions.strided_downsample(labels, pred_hw)
      weights = loss_functions.strided_downsample(weights, pred_hw)
    batch_size = tf.shape(logits)[0]
    num_pixels = pred_hw[0] * pred_hw[1]
    logits = tf.reshape(logits, [batch_size, num_pixels, logits.shape[-1]])
    labels = tf.reshape(tf.cast(labels, tf.int32), [batch_size, num_pixels])
    weights = tf.reshape(weights, [batch_size, num_pixels])
    if self._semantic_sample_k > 0:
      if num_pixels != gt.pixel_non_void_mask.shape[1]:
        raise ValueError('Semantic pixel sampling needs semantic_logits at the size of the '
                         'pixel-space outputs.')
      sample_logits = (tf.math.log(gt.pixel_inverse_mask_area) *
                       self._semantic_sample_temperature)
      sample_logits += (1.0 - gt.pixel_non_void_mask) * _SOFTMAX_MASKING_CONSTANT
      indices = gumbel_top_k_sample(sample_logits, min(self._semantic_sample_k, num_pixels))
      logits = tf.gather(logits, indices, batch_dims=1)
      labels = tf.gather(labels, indices, batch_dims=1)
      weights = tf.gather(weights, indices, batch_dims=1)
    weights *= tf.cast(tf.not_equal(labels, self._ignore_label), tf.float32)
    one_hot = tf.one_hot(labels, self._num_classes, dtype=tf.float32)
    return loss_functions.soft_cross_entropy(one_hot, logits, weights, self._semantic_top_k)


def total_loss(losses: Dict[str, tf.Tensor]) -> tf.Tensor:
  """Sum of all terms, float32 [B]."""
  return tf.add_n(list(losses.values()))
