"""Dictionary keys shared by the data pipeline, model, losses and evaluation.

The values are DeepLab2's: predictions, ground truth, losses and TFRecord
features keep DeepLab2's names so that its tools and ours read each other's
outputs.
"""

# Model outputs.
PRED_PANOPTIC_KEY = 'panoptic_pred'
PRED_SEMANTIC_KEY = 'semantic_pred'
PRED_INSTANCE_KEY = 'instance_pred'
PRED_SEMANTIC_LOGITS_KEY = 'semantic_logits'
PRED_SEMANTIC_PROBS_KEY = 'semantic_probs'
PRED_SEMANTIC_SCORES_KEY = 'semantic_scores'
PRED_INSTANCE_SCORES_KEY = 'instance_scores'
PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY = 'pixel_space_normalized_feature'
PRED_PIXEL_SPACE_MASK_LOGITS_KEY = 'pixel_space_mask_logits'
PRED_TRANSFORMER_CLASS_LOGITS_KEY = 'transformer_class_logits'
PRED_AUXILIARY_OUTPUTS = 'auxiliary_outputs_pred'

# Ground truth produced by the sample generator.
GT_PANOPTIC_KEY = 'panoptic_gt'
GT_SEMANTIC_KEY = 'semantic_gt'
GT_INSTANCE_CENTER_KEY = 'instance_center_gt'
GT_INSTANCE_REGRESSION_KEY = 'instance_regression_gt'
GT_IS_CROWD = 'is_crowd_gt'
GT_THING_ID_MASK_KEY = 'thing_id_mask_gt'
GT_THING_ID_CLASS_KEY = 'thing_id_class_gt'
GT_PANOPTIC_RAW = 'panoptic_raw'
GT_SEMANTIC_RAW = 'semantic_raw'
GT_IS_CROWD_RAW = 'is_crowd_raw'
GT_SIZE_RAW = 'size_raw'

SEMANTIC_LOSS_WEIGHT_KEY = 'semantic_loss_weight'
CENTER_LOSS_WEIGHT_KEY = 'center_loss_weight'
REGRESSION_LOSS_WEIGHT_KEY = 'regression_loss_weight'

RESIZED_IMAGE = 'resized_image'
IMAGE = 'image'
IMAGE_NAME = 'image_name'

# Loss names (per-sample [B] values in the loss dict).
SEMANTIC_LOSS = 'semantic_loss'
PQ_STYLE_LOSS = 'pq_style_loss'
PQ_STYLE_LOSS_CLASS_TERM = 'pq_style_loss_class_term'
PQ_STYLE_LOSS_MASK_DICE_TERM = 'pq_style_loss_mask_dice_term'
MASK_ID_CROSS_ENTROPY_LOSS = 'mask_id_cross_entropy_loss'
INSTANCE_DISCRIMINATION_LOSS = 'instance_discrimination_loss'
TOTAL_LOSS = 'total_loss'

# TFRecord features (DeepLab2's format).
KEY_ENCODED_IMAGE = 'image/encoded'
KEY_IMAGE_FILENAME = 'image/filename'
KEY_IMAGE_FORMAT = 'image/format'
KEY_IMAGE_HEIGHT = 'image/height'
KEY_IMAGE_WIDTH = 'image/width'
KEY_IMAGE_CHANNELS = 'image/channels'
KEY_ENCODED_LABEL = 'image/segmentation/class/encoded'
KEY_LABEL_FORMAT = 'image/segmentation/class/format'

# Checkpoint children of the prediction head (see model/checkpoint_contract).
CKPT_SEMANTIC_LAST_LAYER = 'semantic_last_layer'
CKPT_SEMANTIC_DECODER = 'semantic_decoder'
CKPT_SEMANTIC_HEAD_WITHOUT_LAST_LAYER = 'semantic_head_without_last_layer'
CKPT_PIXEL_SPACE_HEAD = 'pixel_space_head'
CKPT_TRANSFORMER_MASK_HEAD = 'transformer_mask_head'
CKPT_TRANSFORMER_CLASS_HEAD = 'transformer_class_head'
CKPT_PIXEL_SPACE_FEATURE_BATCH_NORM = 'pixel_space_feature_batch_norm'
CKPT_PIXEL_SPACE_MASK_BATCH_NORM = 'pixel_space_mask_batch_norm'

# Pixel encoder / pixel decoder endpoints (DeepLab2's names). Stage k has stride
# 2**k; `stage{k}` is not activated, `res{k}` is its activation.
ENCODER_STAGE_KEY = 'stage{}'
ENCODER_ACTIVATED_STAGE_KEY = 'res{}'
BACKBONE_OUTPUT_KEY = 'backbone_output'
DECODER_STAGE_KEY = 'decoder_stage{}'
DECODER_OUTPUT_KEY = 'decoder_output'
