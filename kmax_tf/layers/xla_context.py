"""Which backend will run the code being traced: XLA, or TensorFlow with oneDNN.

Some layers pick a different (numerically equivalent) formulation under XLA,
where a few TensorFlow kernels lower to very slow code on CPU, or with oneDNN,
which has faster kernels for some of them.
"""

import tensorflow as tf
# No public API tells whether a trace is inside `tf.function(jit_compile=True)`.
from tensorflow.python.ops import control_flow_util  # pylint: disable=g-direct-tensorflow-import
from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-direct-tensorflow-import


def in_xla_context() -> bool:
  """True while tracing a function (or a function called by one) compiled with XLA."""
  if tf.executing_eagerly():
    return False
  return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def onednn_enabled() -> bool:
  """True when TensorFlow runs CPU kernels with oneDNN (TF_ENABLE_ONEDNN_OPTS, default on x86)."""
  return bool(_pywrap_util_port.IsMklEnabled())
