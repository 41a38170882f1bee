"""Maskwise post-processing through LiteRT and ONNX: its area counts convert exactly.

The released configs post-process maskwise with area limits, whose pixel
counts are `UnsortedSegmentSum`s: ONNX gets them through the ScatterElements
handler of `kmax_tf.export.portable`, LiteRT as its builtin
UNSORTED_SEGMENT_SUM. Random weights leave every maskwise pixel void (no slot
reaches the 0.4 pixel and 0.7 class thresholds), so the slim test model gets
sharpened weights: the shared mask-logit BN gamma and the class-head kernel
are scaled up until masks and classes pass the thresholds.
"""

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf.export import portable
from kmax_tf.export import runtimes
from kmax_tf.export import serving
from kmax_tf.keras_setup import keras
from tests.export import tiny_config
from tests.helpers import sharpened_model

pytestmark = pytest.mark.slow  # A slim model, a SavedModel and two conversions (~1.5 min).

# At the 129 crop the thing limit removes one thing of the third photo and keeps
# the others (crop areas ~500 to ~1100 pixels): wrong counts change the maps.
THING_AREA_LIMIT = 900
STUFF_AREA_LIMIT = 200
MASKWISE_OVERRIDES = tiny_config.SLIM_OVERRIDES + (
    'evaluator_options.transformer_post_processing=maskwise',
    # Above 1/3: the paste runs on per-slot areas and pairwise overlap counts.
    'evaluator_options.pixel_confidence_threshold=0.4',
    'evaluator_options.maskwise_postprocessing.transformer_class_confidence_threshold_thing=0.7',
    'evaluator_options.maskwise_postprocessing.transformer_class_confidence_threshold_stuff=0.5',
    'evaluator_options.maskwise_postprocessing.overlapping_threshold=0.8',
    'evaluator_options.maskwise_postprocessing.reorder_class_weight=1.0',
    'evaluator_options.maskwise_postprocessing.reorder_mask_weight=1.0',
    f'evaluator_options.thing_area_limit={THING_AREA_LIMIT}',
    f'evaluator_options.stuff_area_limit={STUFF_AREA_LIMIT}',
)
@pytest.fixture(scope='module')
def maskwise_exports(tmp_path_factory):
  """(SavedModel serve function, {format: serve function}, ONNX op types, metadata)."""
  root = tmp_path_factory.mktemp('portable_maskwise')
  keras.utils.set_random_seed(11)
  config = serving.load_experiment_config(tiny_config.BASE_CONFIG, overrides=MASKWISE_OVERRIDES)
  module = serving.build_serving_module(config, None)
  sharpened_model.sharpen(module.model)
  saved_model = tf.saved_model.load(serving.save_module(module, root / 'saved_model'))
  serve_fns = {}
  for export_format, data in ((portable.FORMAT_TFLITE, portable.convert_tflite(module)),
                              (portable.FORMAT_ONNX, portable.convert_onnx(module))):
    metadata = portable.file_metadata(module, export_format, 'none')
    path = portable.write_model_file(data, metadata, root / export_format,
                                     portable.MODEL_FILES[export_format])
    load = runtimes.load_tflite if export_format == portable.FORMAT_TFLITE else runtimes.load_onnx
    serve_fns[export_format] = load(path)[0]
    if export_format == portable.FORMAT_ONNX:
      import onnx
      onnx_ops = {node.op_type for node in onnx.load_from_string(data).graph.node}
  return saved_model.signatures['serving_default'], serve_fns, onnx_ops, module.metadata


def test_maskwise_exports_give_the_saved_model_maps(maskwise_exports, photos):
  saved_model, serve_fns, onnx_ops, metadata = maskwise_exports
  divisor = metadata['panoptic_label_divisor']
  void_label = metadata['ignore_label'] * divisor
  assert 'ScatterElements' in onnx_ops  # The area counts went through the handler.
  for image in photos:
    expected = saved_model(images=tf.constant(image[None]))
    panoptic = expected['panoptic_pred'].numpy()[0]
    labels, areas = np.unique(panoptic, return_counts=True)
    # The maps mean something: mostly labelled, with a thing and another segment.
    assert np.mean(panoptic == void_label) < 0.5, (labels, areas)
    assert len(labels[labels != void_label]) >= 2 and np.any(labels % divisor), (labels, areas)
    for export_format, serve in serve_fns.items():
      outputs = serve(image[None])
      for key in serving.INT_MAP_KEYS:
        got = outputs[key].numpy()[0]
        agreement = np.mean(got == expected[key].numpy()[0])
        assert agreement >= 0.999, (export_format, key, agreement)
      np.testing.assert_array_equal(np.unique(outputs['panoptic_pred'].numpy()), labels,
                                    err_msg=export_format)
