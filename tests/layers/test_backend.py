"""Tests for kmax_tf.backend (kernel choices) and layers/xla_context (what traces the code).

xla_context relies on two private TensorFlow symbols (no public API answers
"is this trace XLA-compiled?" or "does TensorFlow run oneDNN kernels?"); the
first test fails loudly if a TensorFlow upgrade moves them.
"""

import tensorflow as tf

from kmax_tf import backend
from kmax_tf.layers import xla_context


def test_private_tensorflow_symbols_still_exist():
  from tensorflow.python.ops import control_flow_util
  from tensorflow.python.util import _pywrap_util_port
  assert callable(control_flow_util.GraphOrParentsInXlaContext), (
      'TensorFlow moved control_flow_util.GraphOrParentsInXlaContext: update xla_context.py')
  assert callable(_pywrap_util_port.IsMklEnabled), (
      'TensorFlow moved _pywrap_util_port.IsMklEnabled: update xla_context.py')
  assert isinstance(_pywrap_util_port.IsMklEnabled(), bool)


def _traced(function, jit_compile):
  seen = []

  @tf.function(jit_compile=jit_compile)
  def traced(x):
    seen.append(function())
    return x + 1

  traced(tf.constant(1.0))
  return seen[0]


def test_xla_context_and_choices_follow_the_tracer():
  assert not xla_context.in_xla_context()  # Eager.
  assert not _traced(xla_context.in_xla_context, jit_compile=False)
  assert _traced(xla_context.in_xla_context, jit_compile=True)
  assert _traced(lambda: backend.depthwise_kernel(False, (1, 1)),
                 jit_compile=True) == backend.DEPTHWISE_BY_SHIFTED_SUMS
  assert _traced(backend.resize_by_gathers, jit_compile=True)
  assert not _traced(lambda: backend.fuses_inference(None), jit_compile=True)
  assert not _traced(backend.compiles_post_processing_maps, jit_compile=True)
  assert backend.fuses_inference(None) and backend.fuses_inference(False)
  assert not backend.fuses_inference(True)
  assert backend.compiles_helpers() and backend.compiles_post_processing_maps()


def test_onednn_and_other_runtime_choices():
  from tensorflow.python.util import _pywrap_util_port
  onednn = bool(_pywrap_util_port.IsMklEnabled())
  assert xla_context.onednn_enabled() == onednn
  expected = backend.DEPTHWISE_BY_GROUPED_CONV if onednn else backend.DEPTHWISE_NATIVE
  assert backend.depthwise_kernel(None, (1, 1)) == expected
  assert backend.depthwise_kernel(True, (1, 1)) == backend.DEPTHWISE_NATIVE  # Training.
  assert backend.depthwise_kernel(None, (2, 2)) == backend.DEPTHWISE_NATIVE  # Dilated.
  assert backend.separable_resize(32, True) and not backend.separable_resize(33, True)
  assert not backend.separable_resize(8, False)
  with xla_context.other_runtime():
    assert not xla_context.onednn_enabled()
    assert backend.depthwise_kernel(None, (1, 1)) == backend.DEPTHWISE_NATIVE
    assert not backend.separable_resize(8, True)
    assert not backend.compiles_helpers() and not backend.compiles_post_processing_maps()
    assert backend.fuses_inference(None)  # Same rewrites, uncompiled.
  assert backend.compiles_helpers()
