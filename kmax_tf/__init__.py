"""kmax_tf: kMaX-DeepLab (k-means Mask Transformer) for TensorFlow 2.

Public API (imported lazily so that `import kmax_tf` stays cheap):
  load_config(path, substitutions=None, overrides=()) -> ExperimentOptions
  build_model(config) -> KMaXDeepLab (a built tf_keras model)
  build_loss(config) -> callable(y_true, y_pred) -> dict of [B] losses
  load_deeplab2_checkpoint(model, path)
  load_pretrained(model, name)   a released checkpoint by name (kmax_tf.pretrained)
  Predictor                      (Predictor.from_pretrained(name) for a released model)
"""

import os

# Keras 2 semantics for code that reads `tf.keras`, if TensorFlow is not yet
# imported; kmax_tf itself always uses tf_keras (see kmax_tf/keras_setup.py).
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

__version__ = '0.1.0'

_LAZY = {
    'load_config': 'kmax_tf.config.loader',
    'build_model': 'kmax_tf.model.builder',
    'build_loss': 'kmax_tf.losses.builder',
    'load_deeplab2_checkpoint': 'kmax_tf.model.checkpoint_loading',
    'Predictor': 'kmax_tf.export.predictor',
    'load_pretrained': 'kmax_tf.pretrained',
}


# Subpackages reachable as attributes after a bare `import kmax_tf`.
_SUBPACKAGES = ('pretrained',)


def __getattr__(name):
  if name in _LAZY:
    import importlib
    return getattr(importlib.import_module(_LAZY[name]), name)
  if name in _SUBPACKAGES:
    import importlib
    return importlib.import_module(f'kmax_tf.{name}')
  raise AttributeError(f'module kmax_tf has no attribute {name!r}')


def __dir__():
  return sorted(list(globals()) + list(_LAZY) + list(_SUBPACKAGES))
