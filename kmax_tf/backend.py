"""Every backend-dependent kernel choice of the layers and the model, in one place.

Some computations have several numerically equivalent formulations whose speed
depends on who runs the traced graph: XLA (`tf.function(jit_compile=True)`),
TensorFlow with oneDNN CPU kernels, or another runtime (LiteRT, ONNX Runtime:
graphs traced inside `xla_context.other_runtime()`, which get the plain
formulation and no nested or XLA-compiled functions). Training always keeps
the plain Keras path (its statistics and gradients). A layer asks one question
here; `xla_context` answers the underlying "what is tracing this?" queries.

The choices:

1. `depthwise_kernel` (layers/convolutions.py, depthwise convolutions): under
   XLA, shifted sums (XLA's depthwise convolution is very slow on CPU); in
   inference with oneDNN and no dilation, a grouped `conv2d` (same values bit
   for bit, 1.3-2x faster); else `depthwise_conv2d`.
2. `resize_by_gathers` (layers/resize.py, model/post_processor.py): under XLA,
   align-corners bilinear resizing by gathers (XLA lowers the resize to a slow
   convolution).
3. `separable_resize` (layers/resize.py): outside XLA and other runtimes, an
   align-corners resize of <= 32 channels as two 1-D resizes (faster in
   TensorFlow's kernel).
4. `fuses_inference` (layers/fused_inference.py, all its users: BatchNorm +
   activation, LayerNorm, axial attention's BN + sum; the kMaX decoder's
   centre steps): inference outside XLA (inside XLA everything is fused
   anyway).
5. `compiles_helpers` (layers/fused_inference.py kernels,
   model/transformer_decoder.py centre steps, model/post_processor.py): the
   inference-only helpers are XLA-compiled `tf.function`s, except for other
   runtimes (tf2onnx cannot convert nested function calls).
6. `compiles_post_processing_maps` (model/post_processor.py): the elementwise
   and reduction work after the mask resize runs as one XLA kernel, outside
   XLA and other runtimes.

Training has one choice of its own, made by the trainer rather than asked here:
inside `layers.activations.lean_gradients()` (the trainer's forward pass) GeLU
keeps only its input for the backward pass (same values, less memory).
"""

from typing import Sequence

from kmax_tf.layers import xla_context

DEPTHWISE_BY_SHIFTED_SUMS = 'shifted_sums'
DEPTHWISE_BY_GROUPED_CONV = 'grouped_conv2d'
DEPTHWISE_NATIVE = 'depthwise_conv2d'

# Above this many channels TensorFlow's own resize beats the separable form.
_MAX_SEPARABLE_RESIZE_CHANNELS = 32


def is_inference(training) -> bool:
  """True for Keras' inference calls (`training` None or False)."""
  return training is None or training is False


def depthwise_kernel(training, dilation_rate: Sequence[int]) -> str:
  """How to run a depthwise convolution (choice 1): one of the DEPTHWISE_* names."""
  if xla_context.in_xla_context():
    return DEPTHWISE_BY_SHIFTED_SUMS
  if is_inference(training) and tuple(dilation_rate) == (1, 1) and xla_context.onednn_enabled():
    return DEPTHWISE_BY_GROUPED_CONV
  return DEPTHWISE_NATIVE


def resize_by_gathers() -> bool:
  """Align-corners bilinear resizing by gathers (choice 2; static sizes only)."""
  return xla_context.in_xla_context()


def separable_resize(channels: int, align_corners: bool) -> bool:
  """An align-corners resize as two 1-D resizes (choice 3), when not by gathers."""
  return (align_corners and channels <= _MAX_SEPARABLE_RESIZE_CHANNELS and
          not xla_context.in_other_runtime_context())


def fuses_inference(training) -> bool:
  """The inference-only rewrites apply (choice 4): not training, not traced for XLA."""
  return is_inference(training) and not xla_context.in_xla_context()


def compiles_helpers() -> bool:
  """Inference-only helpers run as XLA-compiled tf.functions (choice 5)."""
  return not xla_context.in_other_runtime_context()


def compiles_post_processing_maps() -> bool:
  """The post-processor's map computation is one XLA kernel (choice 6)."""
  return not xla_context.in_xla_context() and not xla_context.in_other_runtime_context()
