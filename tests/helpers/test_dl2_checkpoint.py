"""The checkpoint writer reproduces the manifest's keys and the weight rule."""

import numpy as np
import tensorflow as tf

from tests.helpers import dl2_checkpoint


def test_written_checkpoint_has_manifest_keys_and_rule_values(dl2_reference, tmp_path):
  manifest = dl2_checkpoint.read_manifest(dl2_reference / 'manifests' / 'coco_r50.tsv')
  sub = [row for row in manifest if row[0].startswith('encoder/_stem')]
  assert len(sub) > 3
  values = dl2_checkpoint.manifest_values(sub)
  path = dl2_checkpoint.write_checkpoint(values, tmp_path / 'ckpt')
  keys = dl2_checkpoint.checkpoint_keys(path)
  assert keys == {key: shape for key, shape, _ in sub}
  key = sub[0][0]
  stored = tf.train.load_variable(path, key + '/.ATTRIBUTES/VARIABLE_VALUE')
  np.testing.assert_array_equal(stored, values[key])


def test_rule_kernel_scale_uses_fan_in():
  value = dl2_checkpoint.rule_value('x/kernel', (3, 3, 64, 4096))
  assert abs(value.std() * np.sqrt(3 * 3 * 64) - 1.0) < 0.01
  depthwise = dl2_checkpoint.rule_value('x/depthwise_kernel', (3, 3, 256, 64))
  assert abs(depthwise.std() * 3 - 1.0) < 0.01
