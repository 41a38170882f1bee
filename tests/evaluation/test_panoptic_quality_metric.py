"""Tests for the streaming PanopticQualityMetric (eager, tf.function, MirroredStrategy)."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf.evaluation import panoptic_quality_metric as pqm
from tests.evaluation import pq_test_utils

_LABEL_FORMAT = dict(num_classes=10, ignore_label=0, label_divisor=100)
_THINGS = (1, 2, 3, 4, 5)


def _batch(pairs):
  return [np.stack([p[k] for p in pairs]) for k in range(3)]


def test_matches_panopticapi_eagerly_and_in_tf_function(tmp_path):
  pairs = pq_test_utils.random_label_pairs(seed=99, count=6)
  files = pq_test_utils.label_maps_to_coco(str(tmp_path), pairs, thing_class_ids=_THINGS,
                                           **_LABEL_FORMAT)
  reference = pq_test_utils.panopticapi_pq(files[0], files[2], files[1], files[3])
  metric = pqm.PanopticQualityMetric(thing_class_ids=_THINGS, **_LABEL_FORMAT)
  gt, pred, crowd = _batch(pairs[:3])
  metric.update_state(gt, pred, gt_crowd_category=crowd)
  update = tf.function(lambda g, p, c: metric.update_state(g, p, gt_crowd_category=c))
  gt, pred, crowd = _batch(pairs[3:])
  update(tf.constant(gt, tf.int32), tf.constant(pred, tf.int32), tf.constant(crowd, tf.int32))
  ours = metric.result()
  assert pq_test_utils.max_difference(ours, reference) < 1e-12
  scalars = metric.summary_scalars()
  assert scalars['evaluation/pq/PQ'] == ours['All']['pq']
  assert scalars['evaluation/pq/SQ_thing'] == ours['Things']['sq']
  assert 'All' in metric.format_table()[2]
  metric.reset_state()
  assert metric.result()['All']['n'] == 0


def test_is_crowd_map_with_kept_crowd_class():
  # Crowd pixels keep their class (instance 0) and are flagged in is_crowd.
  gt = np.array([[[300, 300, 300, 300, 801, 801]]])
  crowd = np.array([[[True, True, True, True, False, False]]])
  pred = np.array([[[305, 305, 305, 0, 801, 801]]])
  metric = pqm.PanopticQualityMetric(thing_class_ids=_THINGS, **_LABEL_FORMAT)
  metric.update_state(gt, pred, gt_is_crowd=crowd)
  totals = metric.totals()
  assert totals.fp.sum() == 0 and totals.fn.sum() == 0 and totals.tp[8] == 1
  plain = pqm.PanopticQualityMetric(thing_class_ids=_THINGS, **_LABEL_FORMAT)
  plain.update_state(gt, pred)
  # Without the crowd map the region is an ordinary segment that gets matched.
  assert plain.totals().tp[3] == 1


def test_deeplab2_variant_reproduces_reference(dl2_reference):
  data = np.load(dl2_reference / 'pq' / 'pq_pairs.npz')
  reference = json.loads((dl2_reference / 'pq' / 'pq_results.json').read_text())['results']
  metric = pqm.PanopticQualityMetric(134, 0, 256, range(1, 81), variant='deeplab2')
  for i in range(3):
    metric.update_state(data[f'pair{i}/gt_panoptic'], data[f'pair{i}/pred_panoptic'])
  result = metric.result()['All']
  for ours, theirs in (('pq', 'PQ'), ('sq', 'SQ'), ('rq', 'RQ'), ('tp', 'TP'), ('fn', 'FN'),
                       ('fp', 'FP')):
    assert result[ours] == pytest.approx(reference['all_pairs_accumulated'][theirs], abs=2e-7)
  assert metric.summary_scalars()['evaluation/pq/TP'] == pytest.approx(result['tp'])


def test_constructor_errors():
  with pytest.raises(ValueError, match='variant'):
    pqm.PanopticQualityMetric(10, 0, 100, [1], variant='fast')
  with pytest.raises(ValueError, match=r'thing_class_ids \[12\]'):
    pqm.PanopticQualityMetric(10, 0, 100, [1, 12])


_MIRRORED_SCRIPT = textwrap.dedent('''
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from kmax_tf.evaluation import panoptic_quality_metric as pqm
    from tests.evaluation import pq_test_utils
    pairs = pq_test_utils.random_label_pairs(seed=5, count=8)
    gt = np.stack([p[0] for p in pairs]).astype(np.int32)
    pred = np.stack([p[1] for p in pairs]).astype(np.int32)
    crowd = np.stack([p[2] for p in pairs]).astype(np.int32)
    strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
    fmt = dict(num_classes=10, ignore_label=0, label_divisor=100, thing_class_ids=(1, 2, 3, 4, 5))
    with strategy.scope():
      metric = pqm.PanopticQualityMetric(**fmt)
    def shard(ctx):
      i = ctx.replica_id_in_sync_group
      return gt[i::2], pred[i::2], crowd[i::2]
    values = strategy.experimental_distribute_values_from_function(shard)
    @tf.function
    def step(inputs):
      strategy.run(lambda g, p, c: metric.update_state(g, p, gt_crowd_category=c), args=inputs)
    step(values)
    local = [v.numpy().tolist() for v in strategy.experimental_local_results(
        metric.true_positives)]
    single = pqm.PanopticQualityMetric(**fmt)
    single.update_state(gt, pred, gt_crowd_category=crowd)
    print(json.dumps({'mirrored': metric.result()['All'], 'single': single.result()['All'],
                      'tp': metric.totals().tp.tolist(), 'tp_single': single.totals().tp.tolist(),
                      'iou': metric.totals().iou.tolist(),
                      'iou_single': single.totals().iou.tolist(),
                      'local_tp': local}))
''')


def test_mirrored_strategy_merges_replicas(repo_root):
  """Two logical CPUs, each replica sees half the images; the merged result is exact."""
  completed = subprocess.run([sys.executable, '-c', _MIRRORED_SCRIPT], capture_output=True,
                             text=True, timeout=300, cwd=str(repo_root),
                             env={**__import__('os').environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
  assert completed.returncode == 0, completed.stderr[-3000:]
  output = json.loads(completed.stdout.strip().splitlines()[-1])
  assert output['tp'] == output['tp_single']
  np.testing.assert_allclose(output['iou'], output['iou_single'], rtol=0, atol=1e-12)
  # Each replica really accumulated a different half.
  assert output['local_tp'][0] != output['local_tp'][1]
  assert np.add(*output['local_tp']).tolist() == output['tp']
  for key in ('pq', 'sq', 'rq', 'n'):
    assert output['mirrored'][key] == pytest.approx(output['single'][key], abs=1e-12)
