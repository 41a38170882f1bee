"""Random weights that give labelled panoptic maps (for export parity and latency)."""

from kmax_tf import common

# Mask logits 50x and class logits 300x larger than at random initialisation:
# on the slim test models masks and classes then pass the post-processing
# thresholds (on COCO R50, with 128 slots and 134 classes, they do not).
MASK_LOGIT_GAIN = 50.0
CLASS_LOGIT_GAIN = 300.0


def sharpen(model, mask_logit_gain: float = MASK_LOGIT_GAIN,
            class_logit_gain: float = CLASS_LOGIT_GAIN) -> None:
  """Scales the mask-logit BatchNorm gamma and the class-head kernel of `model` in place."""
  items = model.checkpoint_items
  gamma = items[common.CKPT_PIXEL_SPACE_MASK_BATCH_NORM].gamma
  gamma.assign(gamma * mask_logit_gain)
  for weight in items[common.CKPT_TRANSFORMER_CLASS_HEAD].trainable_weights:
    if 'kernel' in weight.name:
      weight.assign(weight * class_logit_gain)
