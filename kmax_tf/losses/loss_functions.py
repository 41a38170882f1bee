"""Per-sample loss primitives with DeepLab2's reductions.

Every function returns one value per batch element, float32 [B]; averaging over
the batch (and over replicas) is the trainer's job. The normalisations are
DeepLab2's: cross-entropies are averaged over the entries whose weighted loss is
non-zero, the mask dice loss is summed over masks.
"""

from typing import Sequence

import tensorflow as tf


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
                                  temperature: float) -> tf.Tensor:
  """Softmax cross-entropy of feature self-similarities against same-id indicators.

  The logits are features @ features^T / temperature; the labels are 1 where
  two rows have the same non-negative target id, each row divided by its sum
  (at least 1). That is DeepLab2's targets @ targets^T for one-hot targets,
  without its [K, K, M] products (at K = 4096 and COCO's M = 181 masks, 6
  GFLOP per call). The [B, K, K] logits, labels and softmax are not kept for
  the backward pass but recomputed from the inputs (at K = 4096 that is 192 MB
  less per call; the kMaX loss makes one call per decoder output). The
  gradient is TensorFlow's: softmax(logits) - labels.

  Args:
    features: float32 [B, K, D], differentiable.
    target_ids: int32 [B, K], e.g. mask ids; negative: no target (an all-zero
      label row).
    temperature: the logits' divisor.

  Returns:
    float32 [B, K], the cross-entropy of each row.
  """
  def labels_and_logits(feature_values):
    same = tf.logical_and(tf.equal(target_ids[:, :, tf.newaxis], target_ids[:, tf.newaxis, :]),
                          target_ids[:, :, tf.newaxis] >= 0)
    labels = tf.cast(same, tf.float32)
    labels /= tf.maximum(tf.reduce_sum(labels, axis=-1, keepdims=True), 1.0)
    logits = tf.einsum('bkd,bjd->bkj', feature_values, feature_values)
    return labels, logits / temperature

  @tf.custom_gradient
  def cross_entropy(feature_values):
    labels, logits = labels_and_logits(feature_values)
    per_row = tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)

    def gradient(d_per_row):
      labels, logits = labels_and_logits(feature_values)
      d_logits = d_per_row[..., tf.newaxis] * (tf.nn.softmax(logits) - labels) / temperature
      return (tf.einsum('bkj,bjd->bkd', d_logits, feature_values) +
              tf.einsum('bjk,bjd->bkd', d_logits, feature_values))

    return per_row, gradient

  return cross_entropy(features)


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


def mask_dice_loss(masks_gt: tf.Tensor, mask_logits: tf.Tensor,
                   weights: tf.Tensor) -> tf.Tensor:
  """Weighted sum over masks of (1 - smoothed dice), softmax over masks.

  Args:
    masks_gt: float32 [B, P, L], one-hot mask id per pixel; all-zero rows are
      void pixels, which are excluded from the prediction too.
    mask_logits: float32 [B, P, L], pixel-to-mask logits.
    weights: float32 [B, L], per-mask weights.

  Returns:
    float32 [B].
  """
  probs = tf.nn.softmax(mask_logits, axis=-1)
  probs *= tf.reduce_sum(masks_gt, axis=-1, keepdims=True)
  smooth = 1.0
  numerator = 2.0 * tf.reduce_sum(probs * masks_gt, axis=1) + smooth
  denominator = tf.reduce_sum(probs, axis=1) + tf.reduce_sum(masks_gt, axis=1) + smooth
  dice_loss = 1.0 - tf.math.divide_no_nan(numerator, denominator)
  return tf.reduce_sum(dice_loss * weights, axis=-1)
