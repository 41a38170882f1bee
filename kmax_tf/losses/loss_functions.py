"""Per-sample loss primitives with DeepLab2's reductions.

Every function returns one value per batch element, float32 [B]; averaging over
the batch (and over replicas) is the trainer's job. The normalisations are
DeepLab2's: cross-entropies are averaged over the entries whose weighted loss is
non-zero, the mask dice loss is summed over masks.
"""

from typing import Sequence

import tensorflow as tf

# Added to the dice numerator and denominator.
DICE_SMOOTH = 1.0


def strided_downsample(labels: tf.Tensor, target_hw: Sequence[int]) -> tf.Tensor:
  """Subsamples a label map by taking every s-th pixel, s = (H - 1) / (h - 1).

  Args:
    labels: [B, H, W] (any dtype), static H and W.
    target_hw: (h, w), the prediction's spatial size.

  Returns:
    [B, h, w], the same dtype.

  Raises:
    ValueError: if the size cannot be reached with one integer stride.
  """
  height, width = labels.shape[1], labels.shape[2]
  target_height, target_width = int(target_hw[0]), int(target_hw[1])
  if (height, width) == (target_height, target_width):
    return labels
  if (target_height < 2 or target_width < 2 or (height - 1) % (target_height - 1) or
      (width - 1) % (target_width - 1)):
    raise ValueError(
        f'Labels of size {height}x{width} cannot be subsampled to the prediction size '
        f'{target_height}x{target_width}: (size - 1) must be a multiple of (target - 1).')
  stride = (height - 1) // (target_height - 1)
  if stride != (width - 1) // (target_width - 1):
    raise ValueError(
        f'Labels of size {height}x{width} need different strides along height and width to '
        f'reach the prediction size {target_height}x{target_width}.')
  return labels[:, ::stride, ::stride]


def average_top_k(losses: tf.Tensor, top_k_percent: float = 1.0) -> tf.Tensor:
  """Mean of the largest `top_k_percent` of each sample's losses, zeros excluded.

  Args:
    losses: float32 [B, ...], per-element losses (already weighted).
    top_k_percent: fraction in (0, 1] of the elements kept per sample.

  Returns:
    float32 [B]: sum of the kept losses / number of kept non-zero losses (0 when
    there are none).
  """
  if not 0.0 <= top_k_percent <= 1.0:
    raise ValueError(f'top_k_percent must lie in [0, 1], got {top_k_percent}.')
  losses = tf.reshape(losses, [tf.shape(losses)[0], -1])
  if top_k_percent != 1.0:
    num_kept = tf.cast(
        tf.math.round(top_k_percent * tf.cast(tf.shape(losses)[1], tf.float32)), tf.int32)
    losses = tf.math.top_k(losses, num_kept, sorted=False).values
  num_non_zero = tf.reduce_sum(tf.cast(tf.not_equal(losses, 0.0), tf.float32), axis=1)
  return tf.math.divide_no_nan(tf.reduce_sum(losses, axis=1), num_non_zero)


def soft_cross_entropy(labels: tf.Tensor, logits: tf.Tensor, weights: tf.Tensor,
                       top_k_percent: float = 1.0) -> tf.Tensor:
  """Softmax cross-entropy against (soft) label distributions.

  Args:
    labels: float32 [B, ..., K], one-hot or soft targets; all-zero rows give 0.
    logits: float32 [B, ..., K].
    weights: float32 [B, ...], per-element weights.
    top_k_percent: see `average_top_k`.

  Returns:
    float32 [B].
  """
  per_element = tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
  return average_top_k(per_element * weights, top_k_percent)


def self_similarity_cross_entropy(features: tf.Tensor, target_ids: tf.Tensor,
                                  temperature: float, num_ids: int) -> tf.Tensor:
  """Softmax cross-entropy of feature self-similarities against same-id indicators.

  DeepLab2's pixel-contrastive loss: the logits are s = features @ features^T /
  temperature, the labels of row k are 1 on the rows with k's (non-negative)
  target id, divided by their count. Row k's cross-entropy is therefore
  logsumexp_j s_kj minus the mean of s_kj over k's id, and that mean is
  features_k . (sum of the features with k's id) / (count * temperature), from
  [B, num_ids, D] per-id sums. Only the log-normalizer needs [B, K, K] logits,
  and those are recomputed in the backward pass instead of kept (at K = 4096,
  64 MB per call; the kMaX loss makes one call per decoder output).

  Rows with a negative id have an all-zero label row: their value is 0, yet,
  as with TensorFlow's softmax_cross_entropy_with_logits that DeepLab2 uses,
  their softmax still gets a gradient.

  Args:
    features: float32 [B, K, D], differentiable.
    target_ids: int32 [B, K], ids in [0, num_ids), negative for no target.
    temperature: the logits' divisor.
    num_ids: the number of possible ids, e.g. mask slots M.

  Returns:
    float32 [B, K], the cross-entropy of each row.
  """
  has_target = tf.cast(target_ids >= 0, features.dtype)
  id_one_hot = tf.one_hot(target_ids, num_ids, dtype=features.dtype)  # Zero rows for -1.
  id_feature_sum = tf.einsum('bkm,bkd->bmd', id_one_hot, features)
  same_id_sum = tf.einsum('bkm,bmd->bkd', id_one_hot, id_feature_sum)
  same_id_count = tf.einsum('bkm,bm->bk', id_one_hot, tf.reduce_sum(id_one_hot, axis=1))
  mean_same_id_logit = (tf.reduce_sum(features * same_id_sum, axis=-1) /
                        (tf.maximum(same_id_count, 1.0) * temperature))
  log_normalizer = _self_similarity_log_normalizer(features, temperature)
  # Rows without a target: value 0, gradient of the log-normalizer kept.
  return (log_normalizer - (1.0 - has_target) * tf.stop_gradient(log_normalizer) -
          mean_same_id_logit)


def _self_similarity_log_normalizer(features: tf.Tensor, temperature: float) -> tf.Tensor:
  """logsumexp over j of features_k . features_j / temperature, float32 [B, K].

  The gradient recomputes the [B, K, K] logits rather than keeping them.
  """
  @tf.custom_gradient
  def log_normalizer(feature_values):
    scaled = feature_values / temperature
    logits = tf.einsum('bkd,bjd->bkj', scaled, feature_values)
    values = tf.reduce_logsumexp(logits, axis=-1)

    def gradient(d_values):
      # Recomputed when d_values arrives, not as soon as the features exist.
      with tf.control_dependencies([d_values]):
        logits = tf.einsum('bkd,bjd->bkj', scaled, feature_values)
      d_logits = d_values[..., tf.newaxis] * tf.exp(logits - values[..., tf.newaxis])
      # Each feature is in a row and a column of the logits; the column term
      # contracts d_logits over its first axis (no transposed copy).
      d_rows = tf.einsum('bkj,bjd->bkd', d_logits, feature_values)
      d_columns = tf.einsum('bjk,bjd->bkd', d_logits, feature_values)
      return (d_rows + d_columns) / temperature

    return values, gradient

  return log_normalizer(features)


def focal_cross_entropy(labels: tf.Tensor, logits: tf.Tensor, weights: tf.Tensor,
                        alpha: float) -> tf.Tensor:
  """Alpha-balanced cross-entropy (focal loss with gamma = 0).

  The last channel is the background (void) class: elements whose target is
  background are weighted by 1 - alpha, the others by alpha.

  Args:
    labels: float32 [B, N, K + 1] one-hot targets, background last.
    logits: float32 [B, N, K + 1].
    weights: float32 [B, N].
    alpha: weight of the foreground elements.

  Returns:
    float32 [B], the weighted sum over elements divided by the number of
    non-zero weighted elements.
  """
  per_element = tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
  background = labels[..., -1]
  alpha_weights = alpha * (1.0 - background) + (1.0 - alpha) * background
  return average_top_k(alpha_weights * per_element * weights)


def target_logit_cross_entropy(logits: tf.Tensor, target_logit: tf.Tensor,
                               has_target: tf.Tensor, weights: tf.Tensor,
                               top_k_percent: float = 1.0) -> tf.Tensor:
  """`soft_cross_entropy` for one-hot labels, given the logit of each target.

  Rows with a target give logsumexp(logits) - target_logit. Rows without one
  (an all-zero label row) give 0, and, as TensorFlow's
  softmax_cross_entropy_with_logits does, still pass the softmax as gradient.

  Args:
    logits: float32 [B, ..., K].
    target_logit: float32 [B, ...], the logit of each row's target class
      (differentiable; a constant for a target outside the K classes).
    has_target: bool [B, ...].
    weights: float32 [B, ...], per-element weights.
    top_k_percent: see `average_top_k`.

  Returns:
    float32 [B].
  """
  log_normalizer = tf.reduce_logsumexp(logits, axis=-1)
  per_element = tf.where(has_target, log_normalizer - target_logit,
                         log_normalizer - tf.stop_gradient(log_normalizer))
  return average_top_k(per_element * weights, top_k_percent)


def mask_dice_loss(masks_gt: tf.Tensor, mask_logits: tf.Tensor, weights: tf.Tensor,
                   pixel_weights: tf.Tensor) -> tf.Tensor:
  """Weighted sum over masks of (1 - smoothed dice), softmax over masks.

  Args:
    masks_gt: float32 [B, P, L], one-hot mask id per pixel (all-zero rows
      allowed).
    mask_logits: float32 [B, P, L], pixel-to-mask logits.
    weights: float32 [B, L], per-mask weights.
    pixel_weights: float32 [B, P], 1 on the pixels the prediction counts on
      (DeepLab2: those with a mask), 0 on the others (void, crowd).

  Returns:
    float32 [B].
  """
  probs = tf.nn.softmax(mask_logits, axis=-1) * pixel_weights[:, :, tf.newaxis]
  numerator = 2.0 * tf.reduce_sum(probs * masks_gt, axis=1) + DICE_SMOOTH
  denominator = tf.reduce_sum(probs, axis=1) + tf.reduce_sum(masks_gt, axis=1) + DICE_SMOOTH
  dice_loss = 1.0 - tf.math.divide_no_nan(numerator, denominator)
  return tf.reduce_sum(dice_loss * weights, axis=-1)
