"""kmax_tf uses Keras 2 (tf_keras) whatever was imported first."""

import subprocess
import sys
import textwrap

import pytest

_CHECK = textwrap.dedent('''
    import os
    os.environ.pop('TF_USE_LEGACY_KERAS', None)
    {first}
    from kmax_tf.keras_setup import keras
    import tf_keras
    assert keras is tf_keras, keras
    layer = keras.layers.Dense(2)
    from kmax_tf.keras_setup import check_keras2_object
    check_keras2_object(layer, 'layer')
    print('OK', type(layer).__module__)
''')


@pytest.mark.parametrize('first', ['import tensorflow as tf; tf.keras.layers', 'import kmax_tf'])
def test_import_order_does_not_matter(first):
  result = subprocess.run([sys.executable, '-c', _CHECK.format(first=first)],
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'OK tf_keras' in result.stdout


def test_keras3_object_gets_a_clear_error():
  keras3 = pytest.importorskip('keras')
  if not keras3.__version__.startswith('3'):
    pytest.skip('Keras 3 is not installed')
  from kmax_tf.keras_setup import check_keras2_object
  with pytest.raises(TypeError, match='Keras 3 object as model.*tf_keras'):
    check_keras2_object(keras3.layers.Dense(2), 'model')
