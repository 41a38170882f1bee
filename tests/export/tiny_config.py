"""A tiny kMaX config on the demo dataset, so export tests stay fast.

Pixelwise post-processing without thresholds or area limits, so that randomly
initialised weights still give panoptic maps with several segments.
"""

import pathlib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
BASE_CONFIG = REPO_ROOT / 'configs' / 'coco' / 'kmax_meta_r50_os32.textproto'
CROP = 129

OVERRIDES = (
    'train_dataset_options.dataset=kmax_demo_panoptic',
    'eval_dataset_options.dataset=kmax_demo_panoptic',
    f'train_dataset_options.crop_size={CROP},{CROP}',
    f'eval_dataset_options.crop_size={CROP},{CROP}',
    f'eval_dataset_options.min_resize_value={CROP},{CROP}',
    f'eval_dataset_options.max_resize_value={CROP},{CROP}',
    'model_options.max_deeplab.auxiliary_semantic_head.output_channels=7',
    'model_options.max_deeplab.num_mask_slots=8',
    'model_options.max_deeplab.transformer_decoder_num_layers=1,0,0',
    'model_options.max_deeplab.pixel_decoder_channels=64,32,32,16',
    'model_options.max_deeplab.pixel_decoder_num_blocks=1,1,1,1',
    'evaluator_options.transformer_class_confidence_threshold=0.0',
    'evaluator_options.pixel_confidence_threshold=0.0',
    'evaluator_options.transformer_post_processing=pixelwise',
    'evaluator_options.thing_area_limit=0',
    'evaluator_options.stuff_area_limit=0',
)


def tiny_config():
  from kmax_tf.export import serving
  return serving.load_experiment_config(BASE_CONFIG, overrides=OVERRIDES)


# Still smaller, for the LiteRT / ONNX export tests (conversions take seconds,
# not minutes): the demo config's backbone scaling. (Pixelwise, as above: with
# random weights maskwise post-processing leaves every pixel void. Its graph,
# area counts included, is checked on the trained demo by benchmarks/export_pq.py.)
SLIM_OVERRIDES = OVERRIDES + (
    'model_options.backbone.stem_width_multiplier=0.5',
    'model_options.backbone.backbone_width_multiplier=0.25',
    'model_options.backbone.backbone_layer_multiplier=0.34',
)
