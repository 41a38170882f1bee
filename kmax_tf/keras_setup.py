"""Keras 2 (tf_keras) for the whole library, whatever was imported first.

DeepLab2's code and the object graphs of its checkpoints rely on Keras 2
attribute tracking. TensorFlow 2.20 maps `tf.keras` to Keras 3 unless
`TF_USE_LEGACY_KERAS=1` was set before TensorFlow was first imported, which a
library cannot guarantee. So kmax_tf never touches `tf.keras`: every module
imports `keras` from here, which is always `tf_keras`.
"""

import os

# Helps code outside the library (orbit, user scripts) that reads `tf.keras`,
# when kmax_tf happens to be imported before TensorFlow.
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import tf_keras as keras  # noqa: E402  (must follow the environment setup)

__all__ = ['keras', 'check_keras2_object']


def _is_keras3_object(obj) -> bool:
  module = type(obj).__module__ or ''
  return module == 'keras' or module.startswith('keras.')


def check_keras2_object(obj, what: str) -> None:
  """Raises a clear TypeError if `obj` is a Keras 3 object.

  Args:
    obj: the object handed to kmax_tf (a model, layer, optimizer, ...).
    what: how the error message names it, e.g. 'model'.
  """
  if _is_keras3_object(obj):
    raise TypeError(
        f'kmax_tf got a Keras 3 object as {what} ({type(obj).__module__}.'
        f'{type(obj).__qualname__}). kmax_tf uses Keras 2 (tf_keras) because '
        'DeepLab2 checkpoints depend on its object graph. Build Keras objects '
        'with `import tf_keras` (or `from kmax_tf.keras_setup import keras`), '
        'or set TF_USE_LEGACY_KERAS=1 before importing TensorFlow so that '
        '`tf.keras` is tf_keras.')
