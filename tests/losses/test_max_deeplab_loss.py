"""Hand-checkable properties of the MaX-DeepLab loss on tiny inputs."""

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf import common
from kmax_tf.losses import ground_truth
from kmax_tf.losses import loss_functions
from kmax_tf.losses import max_deeplab_loss

# Tiny dataset: void 0, things 1 and 2, stuff 3 and 4. Transformer class
# channels follow (thing ids, stuff ids) = (1, 2, 3, 4), then void.
_NUM_CLASSES = 5
_THINGS = (1, 2)
_SIZE = 9
_NUM_SLOTS = 6
_MAX_THING_ID = 4
_CHANNEL_OF_CLASS = {1: 0, 2: 1, 3: 2, 4: 3}
_VOID_CHANNEL = 4
_PRED_KEYS = (common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY, common.PRED_TRANSFORMER_CLASS_LOGITS_KEY,
              common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY)


def _tiny_ground_truth(batch_size=2):
  """Stuff 3 left, stuff 4 right, things of class 1 and 2, a void row; mask ids."""
  semantic = np.full((_SIZE, _SIZE), 3, np.int32)
  semantic[:, 5:] = 4
  thing_id = np.full((_SIZE, _SIZE), -1, np.int32)
  semantic[1:4, 1:4], thing_id[1:4, 1:4] = 1, 0
  semantic[5:8, 5:8], thing_id[5:8, 5:8] = 2, 1
  semantic[8, :] = 0
  # Ground-truth mask index (things first, then stuff 3, 4) per pixel, -1 void.
  mask_index = np.where(thing_id >= 0, thing_id, _MAX_THING_ID + semantic - 3)
  mask_index[semantic == 0] = -1
  y_true = {
      common.GT_SEMANTIC_KEY: np.stack([semantic] * batch_size),
      common.GT_THING_ID_MASK_KEY: np.stack([thing_id] * batch_size),
      common.GT_THING_ID_CLASS_KEY: np.tile(np.array([[1, 2, -1, -1]], np.float32),
                                            [batch_size, 1]),
      common.SEMANTIC_LOSS_WEIGHT_KEY: np.ones((batch_size, _SIZE, _SIZE), np.float32),
  }
  mask_classes = {0: 1, 1: 2, _MAX_THING_ID: 3, _MAX_THING_ID + 1: 4}
  return {k: tf.constant(v) for k, v in y_true.items()}, semantic, mask_index, mask_classes


def _make_loss(num_aux=0, sample_k=_SIZE * _SIZE, **overrides):
  options = dict(num_classes=_NUM_CLASSES, ignore_label=0, thing_class_ids=_THINGS,
                 pq_style_loss_weight=3.0, mask_id_cross_entropy_loss_weight=0.3,
                 instance_discrimination_loss_weight=1.0, semantic_loss_weight=1.0,
                 instance_discrimination_sample_k=sample_k,
                 instance_discrimination_sample_temperature=1.5,
                 auxiliary_output_number=num_aux)
  options.update(overrides)
  return max_deeplab_loss.MaXDeepLabLoss(**options)


def _random_prediction(seed, batch_size=2, num_aux=0):
  rng = np.random.default_rng(seed)

  def one_output():
    feature = rng.normal(size=(batch_size, _SIZE, _SIZE, 8))
    feature /= np.linalg.norm(feature, axis=-1, keepdims=True)
    return {
        common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY: rng.normal(0, 3, (batch_size, _SIZE, _SIZE,
                                                                   _NUM_SLOTS)),
        common.PRED_TRANSFORMER_CLASS_LOGITS_KEY: rng.normal(0, 2, (batch_size, _NUM_SLOTS, 5)),
        common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY: feature,
    }

  y_pred = {k: tf.constant(v, tf.float32) for k, v in one_output().items()}
  y_pred[common.PRED_SEMANTIC_LOGITS_KEY] = tf.constant(
      rng.normal(0, 2, (batch_size, _SIZE, _SIZE, _NUM_CLASSES)), tf.float32)
  if num_aux:
    y_pred[common.PRED_AUXILIARY_OUTPUTS] = tuple(
        {k: tf.constant(v, tf.float32) for k, v in one_output().items()} for _ in range(num_aux))
  return y_pred


def _run(loss, y_true, y_pred, **kwargs):
  return {k: v.numpy() for k, v in loss(y_true, y_pred, **kwargs).items()}


def _perfect_prediction(semantic, mask_index, mask_classes, slot_of_mask, confidence=20.0):
  mask_logits = np.zeros((_SIZE, _SIZE, _NUM_SLOTS), np.float32)
  for mask, slot in slot_of_mask.items():
    mask_logits[mask_index == mask, slot] = confidence
  class_logits = np.zeros((_NUM_SLOTS, 5), np.float32)
  class_logits[:, _VOID_CHANNEL] = confidence
  for mask, slot in slot_of_mask.items():
    class_logits[slot] = 0.0
    class_logits[slot, _CHANNEL_OF_CLASS[mask_classes[mask]]] = confidence
  semantic_logits = confidence * np.eye(_NUM_CLASSES, dtype=np.float32)[semantic]
  feature = np.zeros((_SIZE, _SIZE, 8), np.float32)
  feature[..., 0] = 1.0
  return {
      common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY: tf.constant(mask_logits[np.newaxis].repeat(2, 0)),
      common.PRED_TRANSFORMER_CLASS_LOGITS_KEY: tf.constant(class_logits[np.newaxis].repeat(2, 0)),
      common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY: tf.constant(feature[np.newaxis].repeat(2, 0)),
      common.PRED_SEMANTIC_LOGITS_KEY: tf.constant(semantic_logits[np.newaxis].repeat(2, 0)),
  }


def test_perfect_prediction_gives_zero_matched_terms():
  y_true, semantic, mask_index, mask_classes = _tiny_ground_truth()
  slot_of_mask = {0: 4, 1: 0, _MAX_THING_ID: 2, _MAX_THING_ID + 1: 5}
  y_pred = _perfect_prediction(semantic, mask_index, mask_classes, slot_of_mask)
  losses = _run(_make_loss(), y_true, y_pred)
  for name in ('pq_style_loss_class_term', 'pq_style_loss_mask_dice_term',
               'mask_id_cross_entropy_loss', 'semantic_loss'):
    assert np.all(np.abs(losses[name]) < 1e-6), (name, losses[name])

  # Swapping the two thing classes: the two thing slots keep their masks and
  # pay cross-entropy 20 each at weight alpha * dice (0.75 * 1); the other
  # slots' cross-entropies round to exactly 0 and are not averaged. Hence
  # 3.0 (pq weight) * 0.75 * 20.
  swapped = dict(y_pred)
  class_logits = y_pred[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY].numpy()
  class_logits[..., [0, 1]] = class_logits[..., [1, 0]]
  swapped[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY] = tf.constant(class_logits)
  swapped_losses = _run(_make_loss(), y_true, swapped)
  np.testing.assert_allclose(swapped_losses['pq_style_loss_class_term'], [45.0, 45.0], rtol=1e-4)
  assert np.all(np.abs(swapped_losses['mask_id_cross_entropy_loss']) < 1e-6)
  np.testing.assert_allclose(swapped_losses['semantic_loss'], losses['semantic_loss'])

  # An unmatched slot claiming a class is a false positive: its mask covers
  # void pixels only (void ratio ~1), so it pays (1 - alpha) * 20 = 5, the
  # only non-zero element: 3.0 * 5.
  false_positive = dict(y_pred)
  class_logits = y_pred[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY].numpy()
  class_logits[:, 1] = 0.0  # Slot 1 is unmatched.
  class_logits[:, 1, _CHANNEL_OF_CLASS[3]] = 20.0
  false_positive[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY] = tf.constant(class_logits)
  false_positive_losses = _run(_make_loss(), y_true, false_positive)
  np.testing.assert_allclose(false_positive_losses['pq_style_loss_class_term'], [15.0, 15.0],
                             rtol=1e-4)
  np.testing.assert_allclose(false_positive_losses['mask_id_cross_entropy_loss'],
                             losses['mask_id_cross_entropy_loss'], atol=1e-6)


def test_permuting_mask_slots_leaves_every_term_unchanged():
  y_true = _tiny_ground_truth()[0]
  y_pred = _random_prediction(seed=1, num_aux=1)
  permutation = np.random.default_rng(2).permutation(_NUM_SLOTS)

  def permute(output):
    output = dict(output)
    output[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY] = tf.gather(
        output[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY], permutation, axis=-1)
    output[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY] = tf.gather(
        output[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY], permutation, axis=1)
    return output

  permuted = permute(y_pred)
  permuted[common.PRED_AUXILIARY_OUTPUTS] = tuple(
      permute(aux) for aux in y_pred[common.PRED_AUXILIARY_OUTPUTS])
  loss = _make_loss(num_aux=1)
  original, shuffled = _run(loss, y_true, y_pred), _run(loss, y_true, permuted)
  assert list(original) == loss.loss_names
  for name in original:
    np.testing.assert_allclose(shuffled[name], original[name], rtol=1e-5, err_msg=name)


def test_gradients_reach_every_prediction_tensor():
  y_true = _tiny_ground_truth()[0]
  y_pred = _random_prediction(seed=3, num_aux=1)
  loss = _make_loss(num_aux=1, sample_k=40)
  tensors = {k: v for k, v in y_pred.items() if k != common.PRED_AUXILIARY_OUTPUTS}
  for i, aux in enumerate(y_pred[common.PRED_AUXILIARY_OUTPUTS]):
    tensors.update({f'aux{i}/{k}': v for k, v in aux.items()})
  variables = {k: tf.Variable(v) for k, v in tensors.items()}

  @tf.function
  def gradients():
    with tf.GradientTape() as tape:
      pred = {k: v for k, v in variables.items() if '/' not in k}
      pred[common.PRED_AUXILIARY_OUTPUTS] = tuple(
          {key: variables[f'aux{i}/{key}'] for key in _PRED_KEYS} for i in range(1))
      total = tf.reduce_mean(max_deeplab_loss.total_loss(loss(y_true, pred)))
    return tape.gradient(total, variables)

  for name, gradient in gradients().items():
    assert gradient is not None, name
    assert float(tf.reduce_max(tf.abs(gradient))) > 0.0, name


def test_mask_average_instance_discrimination_matches_numpy():
  y_true, _, mask_index, _ = _tiny_ground_truth(batch_size=1)
  y_pred = _random_prediction(seed=4, batch_size=1)
  loss = _make_loss(sample_k=0, pq_style_loss_weight=0.0, mask_id_cross_entropy_loss_weight=0.0,
                    semantic_loss_weight=0.0, instance_discrimination_temperature=0.5)
  assert loss.loss_names == ['instance_discrimination_loss']
  value = _run(loss, y_true, y_pred)['instance_discrimination_loss']

  feature = y_pred[common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY].numpy().reshape(-1, 8)
  masks = mask_index.reshape(-1)
  present = sorted(set(masks.tolist()) - {-1})
  centers = np.stack([feature[masks == m].mean(0) for m in present])
  centers /= np.linalg.norm(centers, axis=-1, keepdims=True)
  logits = feature @ centers.T / 0.5
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  things = masks >= 0
  things &= masks < _MAX_THING_ID
  target = np.array([present.index(m) if t else 0 for m, t in zip(masks, things)])
  expected = -log_probs[np.arange(len(masks)), target][things].mean()
  np.testing.assert_allclose(value, [expected], rtol=1e-5)


def test_sampled_semantic_loss_with_all_pixels_equals_dense_loss():
  y_true = _tiny_ground_truth()[0]
  y_pred = _random_prediction(seed=5)
  dense = _make_loss(instance_discrimination_loss_weight=0.0)
  sampled = _make_loss(instance_discrimination_loss_weight=0.0, semantic_sample_k=1000)
  np.testing.assert_allclose(_run(sampled, y_true, y_pred)['semantic_loss'],
                             _run(dense, y_true, y_pred)['semantic_loss'], rtol=1e-5)


def test_pixel_sampler_hook_and_sampled_indices_agree():
  y_true = _tiny_ground_truth()[0]
  y_pred = _random_prediction(seed=6)
  indices = tf.constant(np.random.default_rng(0).permutation(81)[:30][np.newaxis].repeat(2, 0),
                        tf.int32)
  calls = []

  def sampler(logits, k, output_index):
    calls.append((k, output_index))
    return indices

  hooked = _run(_make_loss(sample_k=30, pixel_sampler=sampler), y_true, y_pred)
  replayed = _run(_make_loss(sample_k=30), y_true, y_pred, sampled_indices=[indices])
  assert calls == [(30, 0)]
  np.testing.assert_allclose(hooked['instance_discrimination_loss'],
                             replayed['instance_discrimination_loss'])


def test_clear_errors_for_bad_inputs():
  y_true = _tiny_ground_truth()[0]
  y_pred = _random_prediction(seed=7)
  with pytest.raises(ValueError, match='auxiliary outputs'):
    _make_loss(num_aux=2)(y_true, y_pred)
  with pytest.raises(ValueError, match='thing_id_mask_gt'):
    _make_loss()({common.GT_SEMANTIC_KEY: y_true[common.GT_SEMANTIC_KEY]}, y_pred)
  small = dict(y_pred)
  small[common.PRED_SEMANTIC_LOGITS_KEY] = tf.zeros([2, 4, 4, _NUM_CLASSES])
  with pytest.raises(ValueError, match='cannot be subsampled'):
    _make_loss()(y_true, small)


def test_stuff_class_ids_follow_the_void_label():
  assert ground_truth.stuff_class_ids(133, range(1, 81), 0) == list(range(81, 134))
  assert ground_truth.stuff_class_ids(19, range(11, 19), 255) == list(range(11))


def test_average_top_k_ignores_zeros_and_keeps_the_largest():
  losses = tf.constant([[1.0, 2.0, 3.0, 0.0], [0.0, 0.0, 4.0, 0.0]])
  np.testing.assert_allclose(loss_functions.average_top_k(losses).numpy(), [2.0, 4.0])
  np.testing.assert_allclose(loss_functions.average_top_k(losses, 0.5).numpy(), [2.5, 4.0])


@pytest.mark.parametrize('num_masks, num_slots', [(9, 5), (5, 9)])
def test_fast_matching_equals_deeplab2_padded_matching(num_masks, num_slots):
  rng = np.random.default_rng(num_masks)
  cost = -rng.uniform(0, 1, (6, num_masks, num_slots)).astype(np.float32)
  present = (rng.uniform(size=(6, num_masks)) < 0.5).astype(np.float32)
  present[0] = 0.0
  present[1] = 1.0  # More present masks than slots when num_masks > num_slots.
  slow = max_deeplab_loss.padded_square_matching(tf.constant(cost), tf.constant(present))
  fast = max_deeplab_loss.match_masks_to_slots(tf.constant(cost), tf.constant(present))
  size = max(num_masks, num_slots)
  for b in range(6):
    assert sorted(fast[b].numpy().tolist()) == list(range(size))
    rows = np.flatnonzero(present[b])
    np.testing.assert_array_equal(fast.numpy()[b, rows], slow.numpy()[b, rows])
    on_real_slots = np.sum(slow.numpy()[b, rows] < num_slots)
    assert on_real_slots == min(len(rows), num_slots)


def test_runs_in_replica_context_with_per_sample_outputs():
  y_true = _tiny_ground_truth()[0]
  y_pred = _random_prediction(seed=8)
  loss = _make_loss()
  strategy = tf.distribute.MirroredStrategy(['/cpu:0'])

  @tf.function
  def replica_step():
    return strategy.run(loss, args=(y_true, y_pred))

  distributed = replica_step()
  eager = _run(loss, y_true, y_pred)
  assert list(distributed) == loss.loss_names
  for name, value in distributed.items():
    assert value.shape == (2,)
    np.testing.assert_allclose(value.numpy(), eager[name], rtol=1e-5, err_msg=name)


@pytest.mark.slow
def test_whole_loss_compiles_with_xla():
  y_true = _tiny_ground_truth()[0]
  y_pred = _random_prediction(seed=9, num_aux=1)
  loss = _make_loss(num_aux=1, sample_k=40)
  indices = [tf.tile(tf.range(40)[tf.newaxis], [2, 1])] * 2
  compiled = tf.function(loss, jit_compile=True)(y_true, y_pred, sampled_indices=indices)
  eager = _run(loss, y_true, y_pred, sampled_indices=indices)
  for name, value in compiled.items():
    np.testing.assert_allclose(value.numpy(), eager[name], rtol=1e-5, err_msg=name)


def test_ground_truth_mask_ids_index_the_one_hot_masks():
  y_true, _, mask_index, _ = _tiny_ground_truth()
  gt = ground_truth.prepare_mask_ground_truth(y_true, (_SIZE, _SIZE), _THINGS, [3, 4], 0)
  ids = gt.pixel_mask_id.numpy()
  np.testing.assert_array_equal(ids, np.stack([mask_index.reshape(-1)] * 2))
  one_hot = gt.pixel_mask_id_one_hot.numpy()
  np.testing.assert_array_equal(one_hot.argmax(-1)[ids >= 0], ids[ids >= 0])
  assert not one_hot[ids < 0].any()


def _deeplab2_mask_terms(gt, slot_for_mask, logits, dice_weight, top_k):
  """DeepLab2's composition: logits padded with -99999 and permuted into mask order."""
  num_masks, num_slots = gt.pixel_mask_id_one_hot.shape[-1], logits.shape[-1]
  size = max(num_masks, num_slots)
  masks_gt = tf.pad(gt.pixel_mask_id_one_hot, [[0, 0], [0, 0], [0, size - num_masks]])
  padded = tf.pad(logits, [[0, 0], [0, 0], [0, size - num_slots]], constant_values=-99999.0)
  permuted = tf.gather(padded, slot_for_mask, axis=2, batch_dims=1)
  probs = tf.nn.softmax(permuted) * tf.reduce_sum(masks_gt, axis=-1, keepdims=True)
  dice = 1.0 - ((2.0 * tf.reduce_sum(probs * masks_gt, axis=1) + 1.0) /
                (tf.reduce_sum(probs, axis=1) + tf.reduce_sum(masks_gt, axis=1) + 1.0))
  weights = tf.pad(dice_weight, [[0, 0], [0, size - num_masks]])
  return (tf.reduce_sum(dice * weights, axis=-1),
          loss_functions.soft_cross_entropy(masks_gt, permuted, gt.pixel_non_void_mask, top_k))


@pytest.mark.parametrize('num_slots', [3, 6, 9])
def test_slot_order_targets_equal_deeplab2_permuted_logits(num_slots):
  # 4 present masks (2 things, 2 stuff) of M = 6; with 3 slots one present mask
  # is matched to a padding slot. A crowd region: thing class, no mask id.
  y_true, *_ = _tiny_ground_truth()
  thing_id = y_true[common.GT_THING_ID_MASK_KEY].numpy()
  semantic = y_true[common.GT_SEMANTIC_KEY].numpy()
  semantic[:, 0, 6:8], thing_id[:, 0, 6:8] = 1, -1
  y_true = dict(y_true, **{common.GT_SEMANTIC_KEY: tf.constant(semantic),
                           common.GT_THING_ID_MASK_KEY: tf.constant(thing_id)})
  gt = ground_truth.prepare_mask_ground_truth(y_true, (_SIZE, _SIZE), _THINGS, [3, 4], 0)
  rng = np.random.default_rng(num_slots)
  size = max(6, num_slots)
  slot_for_mask = tf.constant(np.stack([rng.permutation(size) for _ in range(2)]), tf.int32)
  dice_weight = tf.constant(rng.uniform(0.1, 1.0, (2, 6)), tf.float32) * gt.mask_non_void
  logits = tf.Variable(rng.normal(0, 3, (2, _SIZE * _SIZE, num_slots)), dtype=tf.float32)
  targets = max_deeplab_loss.SlotTargets.from_matching(gt, slot_for_mask, dice_weight, num_slots)
  upstream = tf.constant(rng.uniform(0.5, 1.5, (2, 2)), tf.float32)
  results = []
  for terms in (lambda: (targets.mask_dice_loss(logits),
                         targets.mask_id_cross_entropy(logits, gt.pixel_non_void_mask, 1.0)),
                lambda: _deeplab2_mask_terms(gt, slot_for_mask, logits, dice_weight, 1.0)):
    with tf.GradientTape() as tape:
      dice, cross_entropy = terms()
      total = tf.reduce_sum(tf.stack([dice, cross_entropy], axis=1) * upstream)
    results.append((dice.numpy(), cross_entropy.numpy(), tape.gradient(total, logits).numpy()))
  (dice, cross_entropy, gradient), (dl2_dice, dl2_cross_entropy, dl2_gradient) = results
  on_padding = slot_for_mask.numpy()[:, :6] >= num_slots
  assert on_padding[gt.mask_non_void.numpy() > 0].any() == (num_slots == 3)
  if num_slots == 3:  # The padding slot's pixels cost 99999 + logsumexp.
    assert dl2_cross_entropy.max() > 1e3
  np.testing.assert_allclose(dice, dl2_dice, rtol=1e-5)
  np.testing.assert_allclose(cross_entropy, dl2_cross_entropy, rtol=1e-5)
  # Crowd pixels: value 0, yet their softmax is a gradient, as in TensorFlow's
  # softmax_cross_entropy_with_logits.
  crowd = (semantic == 1).reshape(2, -1) & (thing_id == -1).reshape(2, -1)
  assert np.abs(dl2_gradient[crowd]).min() > 0
  np.testing.assert_allclose(gradient, dl2_gradient, rtol=1e-4, atol=1e-6)
