"""Tests of the kMaX panoptic post-processor against DeepLab2 outputs and by hand."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format

from kmax_tf import common
from kmax_tf.data import dataset_descriptors
from kmax_tf.model import post_processor as pp
from kmax_tf.protos import config_pb2

_MAP_KEYS = (common.PRED_PANOPTIC_KEY, common.PRED_INSTANCE_KEY, common.PRED_SEMANTIC_KEY)
_SCORE_KEYS = (common.PRED_INSTANCE_SCORES_KEY, common.PRED_SEMANTIC_SCORES_KEY)
_REFERENCES = {
    'coco_r50_129x129': 'coco_panoptic',
    'cityscapes_r50_129x257': 'cityscapes_panoptic',
}


def _options(**overrides):
  """Tiny dataset: void 0, class 1 thing, class 2 stuff (channels: 1, 2, void)."""
  values = dict(thing_class_ids=(1,), void_label=0, label_divisor=1000,
                transformer_post_processing=pp.MASKWISE, pixel_confidence_threshold=0.4,
                class_threshold_thing=0.7, class_threshold_stuff=0.5,
                overlapping_threshold=0.8, reorder_class_weight=1.0, reorder_mask_weight=1.0)
  values.update(overrides)
  return pp.PostProcessingOptions(**values)


def _class_logits(probabilities):
  return tf.constant(np.log(np.asarray(probabilities, np.float32))[None])


def _run(mask_logits, class_logits, options, output_size=(2, 2)):
  outputs = pp.panoptic_predictions(tf.constant(mask_logits, tf.float32)[None], class_logits,
                                    options, output_size=output_size)
  return {key: value.numpy()[0] for key, value in outputs.items()}


# Slot 0: thing (p=0.9) on the top row; slot 1: stuff (p=0.8) on the bottom row;
# slot 2: mostly void. Logits 10 vs 0 give mask probabilities of ~1.
_TWO_SEGMENTS = np.zeros([2, 2, 3], np.float32)
_TWO_SEGMENTS[0, :, 0] = 10.0
_TWO_SEGMENTS[1, :, 1] = 10.0
_TWO_SEGMENT_CLASSES = [[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]


def test_maskwise_hand_checked_two_segments():
  out = _run(_TWO_SEGMENTS, _class_logits(_TWO_SEGMENT_CLASSES), _options())
  # Thing class 1, first pasted slot -> instance id 1; stuff class 2 -> no instance id.
  np.testing.assert_array_equal(out[common.PRED_PANOPTIC_KEY], [[1001, 1001], [2000, 2000]])
  np.testing.assert_array_equal(out[common.PRED_SEMANTIC_KEY], [[1, 1], [2, 2]])
  np.testing.assert_array_equal(out[common.PRED_INSTANCE_KEY], [[1, 1], [2, 2]])
  np.testing.assert_allclose(out[common.PRED_SEMANTIC_SCORES_KEY], [[0.9, 0.9], [0.8, 0.8]],
                             rtol=1e-5)
  # Instance score: max mask probability = 1 / (1 + 2 exp(-10)).
  np.testing.assert_allclose(out[common.PRED_INSTANCE_SCORES_KEY],
                             np.full([2, 2], 1 / (1 + 2 * math.exp(-10))), rtol=1e-6)


def test_maskwise_drops_a_mask_that_overlaps_too_much():
  # Slot 2 becomes a confident thing (p=0.85) sharing pixel (0, 0) with slot 0
  # (both at probability ~0.5 there). Paste order by class confidence x mean
  # mask probability: slot 1 (0.8 x 1), slot 0 (0.9 x 0.75), slot 2 (0.85 x 0.5).
  # Slot 2 finds 0 of its 1 pixel free and is dropped; slot 0 is pasted second,
  # so its instance id is 2.
  logits = _TWO_SEGMENTS.copy()
  logits[0, 0, 2] = 10.0
  classes = [[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.85, 0.1, 0.05]]
  out = _run(logits, _class_logits(classes), _options())
  np.testing.assert_array_equal(out[common.PRED_PANOPTIC_KEY], [[1002, 1002], [2000, 2000]])
  np.testing.assert_array_equal(out[common.PRED_INSTANCE_KEY], [[2, 2], [1, 1]])
  # With overlapping_threshold 0 it is still dropped (0 free pixels > 0 fails).
  out = _run(logits, _class_logits(classes), _options(overlapping_threshold=0.0))
  np.testing.assert_array_equal(out[common.PRED_PANOPTIC_KEY], [[1002, 1002], [2000, 2000]])
  # If slot 2 had the higher paste priority, it would take pixel (0, 0) and
  # slot 0 (1 of 2 pixels free, 1 > 2 * 0.8 fails) would be dropped.
  classes[2] = [0.98, 0.01, 0.01]
  out = _run(logits, _class_logits(classes), _options(reorder_mask_weight=0.0))
  np.testing.assert_array_equal(out[common.PRED_PANOPTIC_KEY], [[1001, 0], [2000, 2000]])


def test_maskwise_thing_and_stuff_thresholds_and_area_limits():
  # Thing confidence 0.6 < 0.7: the top row becomes void.
  classes = [[0.6, 0.2, 0.2], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]
  out = _run(_TWO_SEGMENTS, _class_logits(classes), _options())
  np.testing.assert_array_equal(out[common.PRED_PANOPTIC_KEY], [[0, 0], [2000, 2000]])
  # Area limits: the 2-pixel thing survives a limit of 2, not of 3.
  out = _run(_TWO_SEGMENTS, _class_logits(_TWO_SEGMENT_CLASSES), _options(thing_area_limit=2))
  np.testing.assert_array_equal(out[common.PRED_PANOPTIC_KEY], [[1001, 1001], [2000, 2000]])
  out = _run(_TWO_SEGMENTS, _class_logits(_TWO_SEGMENT_CLASSES),
             _options(thing_area_limit=3, stuff_area_limit=3))
  np.testing.assert_array_equal(out[common.PRED_PANOPTIC_KEY], [[0, 0], [0, 0]])


def test_no_detection_gives_void_maps():
  classes = [[0.25, 0.15, 0.6], [0.15, 0.25, 0.6], [0.2, 0.2, 0.6]]
  out = _run(_TWO_SEGMENTS, _class_logits(classes), _options(void_label=0))
  np.testing.assert_array_equal(out[common.PRED_PANOPTIC_KEY], np.zeros([2, 2]))
  np.testing.assert_array_equal(out[common.PRED_INSTANCE_KEY], np.ones([2, 2]))
  np.testing.assert_array_equal(out[common.PRED_SEMANTIC_SCORES_KEY], np.zeros([2, 2]))
  np.testing.assert_array_equal(out[common.PRED_INSTANCE_SCORES_KEY], np.zeros([2, 2]))
  # The semantic map is never thresholded.
  np.testing.assert_array_equal(out[common.PRED_SEMANTIC_KEY], [[1, 1], [2, 2]])


def test_pixelwise_hand_checked():
  options = _options(transformer_post_processing=pp.PIXELWISE,
                     transformer_class_confidence_threshold=0.7)
  out = _run(_TWO_SEGMENTS, _class_logits(_TWO_SEGMENT_CLASSES), options)
  # Slot 1 (0.8) and slot 0 (0.9) pass; pixelwise ids are the raw slot + 1.
  np.testing.assert_array_equal(out[common.PRED_PANOPTIC_KEY], [[1001, 1001], [2000, 2000]])
  options = _options(transformer_post_processing=pp.PIXELWISE,
                     transformer_class_confidence_threshold=0.85)
  out = _run(_TWO_SEGMENTS, _class_logits(_TWO_SEGMENT_CLASSES), options)
  # Slot 1 is filtered: its pixels' arg-max is a filtered slot, so they are void.
  np.testing.assert_array_equal(out[common.PRED_PANOPTIC_KEY], [[1001, 1001], [0, 0]])


def test_cityscapes_style_void_label_and_channel_order():
  # Void 255 is not a class channel; things come first in the channel order.
  ids = pp.thing_stuff_class_ids(19, tuple(range(11, 19)), 255)
  assert ids == tuple(range(11, 19)) + tuple(range(11))
  assert pp.thing_stuff_class_ids(133, tuple(range(1, 81)), 0) == tuple(range(1, 134))
  with pytest.raises(ValueError, match='non-void class logits'):
    pp.thing_stuff_class_ids(5, (1, 2, 3, 4, 5, 6), 0)


def _softmax(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def _maskwise_oracle(low_logits, full_logits, class_logits, options):
  """Straightforward per-image numpy transcription of DeepLab2's maskwise rules."""
  num_things = len(options.thing_class_ids)
  num_slots = low_logits.shape[-1]
  class_ids = np.asarray(pp.thing_stuff_class_ids(class_logits.shape[-1] - 1,
                                                  options.thing_class_ids,
                                                  options.void_label))
  class_probs = _softmax(class_logits.astype(np.float64))[:, :-1]
  pred, conf = class_probs.argmax(-1), class_probs.max(-1)
  low = _softmax(low_logits.astype(np.float64)).reshape(-1, num_slots)
  low_mask = low > options.pixel_confidence_threshold
  score = np.where(low_mask.sum(0) > 0,
                   (low * low_mask).sum(0) / np.maximum(low_mask.sum(0), 1), 0.0)
  order = np.argsort(-(conf ** options.reorder_class_weight) *
                     score ** options.reorder_mask_weight, kind='stable')
  probs = _softmax(full_logits.astype(np.float64))
  canvas = np.zeros(probs.shape[:2], np.int64)  # pasted rank + 1
  for rank, slot in enumerate(order):
    mask = probs[..., slot] > options.pixel_confidence_threshold
    free = mask & (canvas == 0)
    threshold = (options.class_threshold_thing if pred[slot] < num_things
                 else options.class_threshold_stuff)
    if conf[slot] >= threshold and free.sum() > mask.sum() * options.overlapping_threshold:
      canvas[free] = rank + 1
  pasted = canvas > 0
  rank = np.maximum(canvas - 1, 0)
  cls = pred[order][rank]
  semantic = class_ids[cls]
  thing = pasted & (cls < num_things)
  stuff = pasted & (cls >= num_things)
  instance = np.where(thing, rank + 1, 0)
  thing_semantic = np.where(thing, semantic + 1, 0)
  stuff_semantic = np.where(stuff, semantic + 1, 0)
  if options.stuff_area_limit:
    counts = np.bincount(stuff_semantic.ravel())[stuff_semantic]
    stuff_semantic = np.where(counts >= options.stuff_area_limit, stuff_semantic, 0)
  if options.thing_area_limit:
    counts = np.bincount(instance.ravel())[instance]
    keep = counts >= options.thing_area_limit
    instance, thing_semantic = np.where(keep, instance, 0), np.where(keep, thing_semantic, 0)
  semantic_out = thing_semantic + stuff_semantic - 1
  semantic_out = np.where(semantic_out < 0, options.void_label, semantic_out)
  return semantic_out * options.label_divisor + instance


@pytest.mark.parametrize('pixel_threshold', [0.4, 0.25])
def test_maskwise_matches_numpy_oracle_on_random_inputs(pixel_threshold):
  # 0.4 takes the pairwise-overlap path, 0.25 the general sequential paste.
  rng = np.random.default_rng(5)
  options = _options(pixel_confidence_threshold=pixel_threshold, thing_area_limit=6,
                     stuff_area_limit=12, overlapping_threshold=0.6,
                     class_threshold_thing=0.4, class_threshold_stuff=0.3,
                     thing_class_ids=(1, 3), reorder_mask_weight=0.5)
  low = rng.normal(0, 3, [3, 5, 7, 12]).astype(np.float32)
  class_logits = rng.normal(0, 2, [3, 12, 6]).astype(np.float32)
  outputs = pp.panoptic_predictions(tf.constant(low), tf.constant(class_logits), options,
                                    output_size=(17, 25))
  full = pp.resize_align_corners(tf.constant(low), (17, 25)).numpy()
  panoptic = outputs[common.PRED_PANOPTIC_KEY].numpy()
  num_segments = 0
  for b in range(3):
    expected = _maskwise_oracle(low[b], full[b], class_logits[b], options)
    np.testing.assert_array_equal(panoptic[b], expected)
    num_segments += len(np.unique(expected))
  assert num_segments > 6  # the inputs are not degenerate


def _reference_case(dl2_reference, name):
  info = json.loads((dl2_reference / 'forward' / f'{name}.json').read_text())
  config = text_format.Parse(info['config_textproto'], config_pb2.ExperimentOptions())
  descriptor = dataset_descriptors.get_dataset_descriptor(_REFERENCES[name])
  options = pp.PostProcessingOptions.from_config(config, descriptor)
  data = np.load(dl2_reference / 'forward' / f'{name}.npz')
  return options, data


@pytest.mark.parametrize('name', sorted(_REFERENCES))
@pytest.mark.parametrize('mode', ['eager', 'xla'])
def test_matches_deeplab2_on_reference_logits(dl2_reference, name, mode):
  options, data = _reference_case(dl2_reference, name)

  def run(mask_logits, class_logits):
    return pp.panoptic_predictions(mask_logits, class_logits, options)

  if mode == 'xla':
    run = tf.function(run, jit_compile=True)
  outputs = run(tf.constant(data['pixel_space_mask_logits']),
                tf.constant(data['transformer_class_logits']))
  for key in _MAP_KEYS:
    np.testing.assert_array_equal(outputs[key].numpy(), data[key], err_msg=key)
  for key in _SCORE_KEYS:
    np.testing.assert_allclose(outputs[key].numpy(), data[key], atol=1e-5, err_msg=key)
  # The reference maps are not degenerate.
  assert len(np.unique(data[common.PRED_PANOPTIC_KEY])) >= 4


def test_batched_equals_per_image(dl2_reference):
  options, data = _reference_case(dl2_reference, 'coco_r50_129x129')
  logits = data['pixel_space_mask_logits']
  class_logits = data['transformer_class_logits']
  # Second image: shifted logits (different segments) and a void-only image.
  batch_logits = np.concatenate([logits, np.roll(logits, 7, axis=1), logits])
  void_only = class_logits.copy()
  void_only[..., -1] = 100.0
  batch_classes = np.concatenate([class_logits, class_logits, void_only])
  batched = pp.panoptic_predictions(tf.constant(batch_logits), tf.constant(batch_classes),
                                    options)
  for b in range(3):
    single = pp.panoptic_predictions(tf.constant(batch_logits[b:b + 1]),
                                     tf.constant(batch_classes[b:b + 1]), options)
    for key in _MAP_KEYS + _SCORE_KEYS:
      np.testing.assert_array_equal(batched[key].numpy()[b], single[key].numpy()[0])
  assert np.all(batched[common.PRED_PANOPTIC_KEY].numpy()[2] == 0)


def test_from_config_errors():
  config = config_pb2.ExperimentOptions()
  config.evaluator_options.transformer_post_processing = 'maskwise'
  descriptor = dataset_descriptors.get_dataset_descriptor('coco_panoptic')
  with pytest.raises(ValueError, match='maskwise_postprocessing is not set'):
    pp.PostProcessingOptions.from_config(config, descriptor)
  config.evaluator_options.transformer_post_processing = 'boxwise'
  with pytest.raises(ValueError, match='transformer_post_processing'):
    pp.PostProcessingOptions.from_config(config, descriptor)


def test_top2_equals_top_k_with_ties():
  rng = np.random.default_rng(0)
  logits = tf.constant(rng.integers(0, 4, [50, 9]).astype(np.float32))  # many ties
  values, indices = pp._top2(logits)
  expected_values, expected_indices = tf.math.top_k(logits, k=2)
  np.testing.assert_array_equal(values.numpy(), expected_values.numpy())
  np.testing.assert_array_equal(indices.numpy(), expected_indices.numpy())
  # The same under XLA, which the post-processing uses outside XLA callers too.
  top2 = pp._top2
  xla_values, xla_indices = tf.function(top2, jit_compile=True)(logits)
  np.testing.assert_array_equal(xla_values.numpy(), expected_values.numpy())
  np.testing.assert_array_equal(xla_indices.numpy(), expected_indices.numpy())


def test_max_and_argmax_equals_tf_argmax_with_ties():
  rng = np.random.default_rng(1)
  values = tf.constant(rng.integers(0, 3, [4, 6, 11]).astype(np.float32))
  largest, index = pp._max_and_argmax(values)
  np.testing.assert_array_equal(index.numpy(), tf.argmax(values, axis=-1).numpy())
  np.testing.assert_array_equal(largest.numpy(), tf.reduce_max(values, axis=-1).numpy())
