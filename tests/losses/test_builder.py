"""build_loss against DeepLab2's reference losses (shared/dl2_reference/loss/)."""

import json

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format

from kmax_tf import common
from kmax_tf.data import dataset_descriptors
from kmax_tf.losses import builder
from kmax_tf.protos import config_pb2

_PRED_KEYS = (common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY, common.PRED_TRANSFORMER_CLASS_LOGITS_KEY,
              common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY)
_NUM_OUTPUT_PIXELS = 17 * 17


@pytest.fixture(scope='module')
def reference(dl2_reference):
  """(npz dict, json dict, y_true, y_pred) of coco_r50_loss."""
  arrays = dict(np.load(dl2_reference / 'loss' / 'coco_r50_loss.npz'))
  meta = json.loads((dl2_reference / 'loss' / 'coco_r50_loss.json').read_text())
  y_true = {key.split('/', 1)[1]: tf.constant(value) for key, value in arrays.items()
            if key.startswith('y_true/')}
  y_pred = {key: tf.constant(arrays[f'y_pred/{key}'])
            for key in _PRED_KEYS + (common.PRED_SEMANTIC_LOGITS_KEY,)}
  y_pred[common.PRED_AUXILIARY_OUTPUTS] = tuple(
      {key: tf.constant(arrays[f'y_pred/auxiliary_outputs_pred/{i}/{key}']) for key in _PRED_KEYS}
      for i in range(6))
  return arrays, meta, y_true, y_pred


def _reference_config(meta, sample_k):
  """The COCO R50 experiment options the reference was computed with."""
  config = config_pb2.ExperimentOptions()
  text_format.Parse(meta['loss_options_textproto'], config.trainer_options.loss_options)
  text_format.Parse(meta['max_deeplab_options_textproto'], config.model_options.max_deeplab)
  config.model_options.max_deeplab.instance_discrimination_sample_k = sample_k
  config.train_dataset_options.dataset = 'coco_panoptic'
  return config


def _reference_values(arrays, variant):
  prefix = variant + '/'
  return {key[len(prefix):]: value for key, value in arrays.items()
          if key.startswith(prefix) and not key.endswith('sampled_indices_call_order')}


@pytest.mark.parametrize('variant, sample_k, num_aux', [
    ('loss_k_all', _NUM_OUTPUT_PIXELS, 6),
    ('loss_eval_no_aux_k_all', _NUM_OUTPUT_PIXELS, 0),
    ('loss_k128', 128, 6),
])
def test_matches_deeplab2_reference(reference, variant, sample_k, num_aux):
  arrays, meta, y_true, y_pred = reference
  loss = builder.build_loss(_reference_config(meta, sample_k), num_auxiliary_outputs=num_aux)
  if not num_aux:
    y_pred = {k: v for k, v in y_pred.items() if k != common.PRED_AUXILIARY_OUTPUTS}
  sampled = None
  if variant == 'loss_k128':
    sampled = tf.constant(arrays['loss_k128/sampled_indices_call_order'])
  # Graph mode for the full variant (as the trainer runs it), eager otherwise.
  run = tf.function(loss) if variant == 'loss_k_all' else loss
  losses = run(y_true, y_pred, sampled_indices=sampled)
  expected = _reference_values(arrays, variant)
  assert list(losses) == loss.loss_names
  assert sorted(losses) == sorted(expected)
  if variant == 'loss_k_all':
    assert list(losses) == meta['loss_names_order']
  for name, value in losses.items():
    assert value.shape == (2,)
    np.testing.assert_allclose(value.numpy(), expected[name], rtol=1e-5, err_msg=name)


def test_real_config_file_builds_deeplab2_terms(repo_root):
  from kmax_tf.config import loader
  config = loader.load_config(repo_root / 'configs' / 'coco' / 'kmax_meta_r50_os32.textproto')
  loss = builder.build_loss(config)
  assert len(loss.loss_names) == 4 + 6 * 4 + 1 + 1
  assert loss.loss_names[:4] == [
      'instance_discrimination_loss', 'pq_style_loss_mask_dice_term',
      'mask_id_cross_entropy_loss', 'pq_style_loss_class_term']
  assert loss.loss_names[4] == 'aux_0pq_style_loss_class_term'
  assert loss.loss_names[-2:] == ['semantic_loss', 'total_loss']
  assert builder.build_loss(config, num_auxiliary_outputs=0).auxiliary_output_number == 0


def test_explicit_descriptor_and_unsupported_losses():
  config = config_pb2.ExperimentOptions()
  config.trainer_options.loss_options.pq_style_loss.weight = 3.0
  descriptor = dataset_descriptors.get_dataset_descriptor('cityscapes_panoptic')
  loss = builder.build_loss(config, descriptor, num_auxiliary_outputs=1)
  assert loss.loss_names == ['pq_style_loss_mask_dice_term', 'pq_style_loss_class_term',
                             'aux_0pq_style_loss_class_term', 'aux_0pq_style_loss_mask_dice_term',
                             'total_loss']
  config.trainer_options.loss_options.center_loss.weight = 200
  with pytest.raises(ValueError, match='center_loss'):
    builder.build_loss(config, descriptor)
  with pytest.raises(ValueError, match='at least one of'):
    builder.build_loss(config_pb2.ExperimentOptions(), descriptor)
