"""Which backend will run the code being traced: XLA, or TensorFlow with oneDNN.

The kernel choices built on these answers are all in `kmax_tf.backend`.

Some layers pick a different (numerically equivalent) formulation under XLA,
where a few TensorFlow kernels lower to very slow code on CPU, or with oneDNN,
which has faster kernels for some of them; graphs exported to other runtimes
(`other_runtime()`) get the plain formulation.
"""

import contextlib
import threading

import tensorflow as tf

# Private TensorFlow modules: no public API tells whether a trace is inside
# `tf.function(jit_compile=True)` or whether oneDNN kernels run. Only this file
# uses them; tests/layers/test_backend.py fails if a TensorFlow upgrade moves them.
from tensorflow.python.ops import control_flow_util
from tensorflow.python.util import _pywrap_util_port


def in_xla_context() -> bool:
  """True while tracing a function (or a function called by one) compiled with XLA."""
  if tf.executing_eagerly():
    return False
  return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def onednn_enabled() -> bool:
  """True when TensorFlow runs CPU kernels with oneDNN (TF_ENABLE_ONEDNN_OPTS, default on x86).

  False while tracing for another runtime (`other_runtime()`).
  """
  return bool(_pywrap_util_port.IsMklEnabled()) and not in_other_runtime_context()


_state = threading.local()


@contextlib.contextmanager
def other_runtime():
  """Code traced inside is for another runtime (LiteRT, ONNX Runtime), not TensorFlow.

  Layers then leave out what only helps TensorFlow run the graph, with the same
  math: no XLA-compiled or nested tf.functions (the inference-only kernels of
  `fused_inference`, the kMaX decoder's centre steps, the post-processor;
  tf2onnx cannot convert such calls) and no oneDNN-specific formulations.
  Used by `kmax_tf.export.portable`.
  """
  depth = getattr(_state, 'depth', 0)
  _state.depth = depth + 1
  try:
    yield
  finally:
    _state.depth = depth


def in_other_runtime_context() -> bool:
  """True while tracing inside `other_runtime()`."""
  return bool(getattr(_state, 'depth', 0))
