"""Export of kMaX-DeepLab panoptic models to LiteRT (TFLite) and ONNX.

Both formats hold one graph, `images` uint8 [1, H, W, 3] (any H, W) ->
`panoptic_pred`, `semantic_pred`, `instance_pred` (int32 [1, H, W]),
`instance_scores`, `semantic_scores` (float32 [1, H, W]): the SavedModel's
`serving_default` pipeline (in-graph resize to range + pad to the eval crop,
network at the crop, post-processing, crop + resize back to the input size,
see `export.preprocessing`) for a batch of one. The export metadata of the
SavedModel (class names, colormap, label divisor, ...; `serving.export_metadata`)
is embedded in the model file (TFLite: flatbuffer metadata `kmax_metadata`;
ONNX: `metadata_props['kmax_metadata']`), and written next to it as
`kmax_metadata.json`.

Graph changes that made the model convertible (none changes a number of the
SavedModel):
* the resize-to-range ratio is computed in float32, not float64 (bit-identical,
  see `kmax_tf.data.preprocessing._ratio`): LiteRT has no float64 ops;
* the network input gets its static crop shape (a reshape), so the stem
  convolution knows its input channels;
* the int32 maps are resized back to the image size as float32 (exact: labels
  are below 2**24, checked at export): LiteRT's nearest resize has no int32;
* the model is traced with `xla_context.other_runtime()`: the
  inference-only XLA functions inline as plain TensorFlow ops, which tf2onnx
  can read (it cannot convert XLA-compiled function calls);
* tf2onnx gets a handler for TensorFlow's `Erfc` (exact GeLU), as 1 - Erf,
  and resizes to a constant size by ONNX `sizes`, not float `scales` (which
  round 5 * (9 / 5) down to 8 rows), and `UnsortedSegmentSum` (the
  post-processor's area counts) as ONNX ScatterElements with reduction 'add'.

Everything else converts to builtin ops: LiteRT needs no select TF ops.

Quantization (TFLite only): 'none' (float32), 'float16' (float16 weights,
float32 compute) and 'dynamic_int8' (int8 weights, activations quantized on
the fly by the kernels that support it).

File layout: the same version-folder rules as the SavedModel
(`serving.resolve_version_dir`): `<output_path>/<n>/model.tflite` (or
`model.onnx`) plus `kmax_metadata.json`, written to a hidden staging folder and
renamed into place when complete.
"""

import json
import os
import shutil
import tempfile
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from kmax_tf.data import preprocessing as data_preprocessing
from kmax_tf.export import preprocessing
from kmax_tf.export import serving
from kmax_tf.layers import xla_context

FORMAT_SAVED_MODEL = 'saved_model'
FORMAT_TFLITE = 'tflite'
FORMAT_ONNX = 'onnx'
FORMATS = (FORMAT_SAVED_MODEL, FORMAT_TFLITE, FORMAT_ONNX)
MODEL_FILES = {FORMAT_TFLITE: 'model.tflite', FORMAT_ONNX: 'model.onnx'}
QUANTIZATIONS = ('none', 'float16', 'dynamic_int8')
METADATA_KEY = serving.METADATA_VARIABLE
ONNX_OPSET = 17
# float32 holds every integer below this exactly.
_FLOAT32_EXACT_INTS = 1 << 24


def file_metadata(module: serving.PanopticServingModule, export_format: str,
                  quantization: str) -> Dict[str, Any]:
  """The SavedModel's metadata plus the file's format and quantization."""
  return dict(module.metadata, export_format=export_format, quantization=quantization)


def _check_int_maps_fit_float32(metadata: Dict[str, Any]) -> None:
  divisor = int(metadata['panoptic_label_divisor'])
  largest = max(int(metadata['num_classes']), int(metadata['ignore_label']) + 1) * divisor
  if largest >= _FLOAT32_EXACT_INTS:
    raise ValueError(f'Panoptic labels up to {largest} (label divisor {divisor}) do not fit '
                     'the exact float32 range (2**24) the portable export resizes them in.')


def portable_function(module: serving.PanopticServingModule):
  """The batch-of-one pipeline of `module` as a tf.function (see module docstring).

  Trace it inside `xla_context.other_runtime()`.

  Args:
    module: a PanopticServingModule.

  Returns:
    A tf.function: `images` uint8 [1, H, W, 3] -> dict of the
    `serving.MAP_KEYS` maps, [1, H, W] each.
  """
  _check_int_maps_fit_float32(module.metadata)
  spec = module.spec
  crop_h, crop_w = spec.crop_size

  def run(images):
    raw_size = tf.shape(images)[1:3]
    padded = tf.reshape(preprocessing.preprocess_image(images[0], spec), [1, crop_h, crop_w, 3])
    maps = module._predict_crops(padded)
    resized = preprocessing.resized_size(raw_size, spec)
    outputs = {}
    for key, value in maps.items():
      restored = data_preprocessing.undo_preprocessing(tf.cast(value, tf.float32), resized,
                                                       raw_size)
      outputs[key] = tf.identity(tf.cast(restored, value.dtype), name=key)
    return outputs

  return tf.function(run, input_signature=[
      tf.TensorSpec([1, None, None, 3], tf.uint8, name=serving.INPUT_IMAGES)])


def convert_tflite(module: serving.PanopticServingModule, quantization: str = 'none') -> bytes:
  """The LiteRT flatbuffer of `module` (builtin ops only) with the metadata embedded."""
  if quantization not in QUANTIZATIONS:
    raise ValueError(f'--quantization must be one of {", ".join(QUANTIZATIONS)}, '
                     f'got {quantization!r}.')
  with xla_context.other_runtime():
    function = portable_function(module).get_concrete_function()
  converter = tf.lite.TFLiteConverter.from_concrete_functions([function], module)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  if quantization != 'none':
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if quantization == 'float16':
    converter.target_spec.supported_types = [tf.float16]
  return add_tflite_metadata(converter.convert(), file_metadata(module, FORMAT_TFLITE,
                                                                quantization))


def add_tflite_metadata(model: bytes, metadata: Dict[str, Any]) -> bytes:
  """`model` with `metadata` (JSON) as the flatbuffer metadata entry `kmax_metadata`."""
  from tensorflow.lite.python import schema_py_generated as schema_fb
  from tensorflow.lite.tools import flatbuffer_utils
  model_object = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
  buffer = schema_fb.BufferT()
  buffer.data = np.frombuffer(json.dumps(metadata).encode('utf-8'), np.uint8)
  model_object.buffers.append(buffer)
  entry = schema_fb.MetadataT()
  entry.name = METADATA_KEY
  entry.buffer = len(model_object.buffers) - 1
  model_object.metadata = list(model_object.metadata or []) + [entry]
  return bytes(flatbuffer_utils.convert_object_to_bytearray(model_object))


def read_tflite_metadata(model: bytes) -> Optional[Dict[str, Any]]:
  """The `kmax_metadata` entry of a LiteRT flatbuffer, or None."""
  from ai_edge_litert import schema_py_generated as schema_fb
  root = schema_fb.Model.GetRootAs(model, 0)
  for index in range(root.MetadataLength()):
    entry = root.Metadata(index)
    if entry.Name() and entry.Name().decode('utf-8') == METADATA_KEY:
      data = root.Buffers(entry.Buffer()).DataAsNumpy()
      return json.loads(np.asarray(data, np.uint8).tobytes().decode('utf-8'))
  return None


def _erfc_as_one_minus_erf(ctx, node, name, args):
  """tf2onnx handler: Erfc(x) -> 1 - Erf(x) (ONNX has Erf only)."""
  from tf2onnx import utils as onnx_utils
  dtype = onnx_utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
  erf = ctx.make_node('Erf', [node.input[0]], op_name_scope=node.name)
  one = ctx.make_const(onnx_utils.make_name(f'{node.name}_one'), np.array(1, dtype))
  node.type = 'Sub'
  ctx.replace_inputs(node, [one.output[0], erf.output[0]])


def _resize_by_sizes(ctx, node, name, args):
  """tf2onnx handler: ResizeBilinear / ResizeNearestNeighbor with an ONNX `sizes` input.

  For a constant output size tf2onnx's own handler passes float `scales`
  (9 / 5 = 1.8 for the 5 -> 9 pixel-decoder upsampling), from which ONNX
  Runtime computes floor(5 * 1.8) = 8 rows. Seen through an Identity, the size
  is not constant and the handler passes it as `sizes`.
  """
  from tf2onnx.onnx_opset import nn as onnx_nn
  size = ctx.make_node('Identity', [node.input[1]], op_name_scope=node.name)
  ctx.replace_inputs(node, [node.input[0], size.output[0]])
  onnx_nn.Resize.version_11(ctx, node)


def _unsorted_segment_sum_by_scatter(ctx, node, name, args):
  """tf2onnx handler: UnsortedSegmentSum as an ONNX ScatterElements with reduction 'add'.

  (tf2onnx's own handler emits a SegmentSum op that ONNX does not define.)
  The post-processor's area counts use it; data and segment ids are flattened.
  """
  from onnx import TensorProto
  from onnx import helper as onnx_helper
  from tf2onnx import utils as onnx_utils
  data, segment_ids, num_segments = node.input
  flat = ctx.make_const(onnx_utils.make_name(f'{node.name}_flat'), np.array([-1], np.int64))
  flat_data = ctx.make_node('Reshape', [data, flat.output[0]], op_name_scope=node.name)
  flat_ids = ctx.make_node('Reshape', [segment_ids, flat.output[0]], op_name_scope=node.name)
  ids64 = ctx.make_node('Cast', [flat_ids.output[0]], attr={'to': TensorProto.INT64},
                        op_name_scope=node.name)
  size = ctx.make_node('Reshape', [num_segments, flat.output[0]], op_name_scope=node.name)
  size64 = ctx.make_node('Cast', [size.output[0]], attr={'to': TensorProto.INT64},
                         op_name_scope=node.name)
  zero = onnx_helper.make_tensor('value', ctx.get_dtype(data), [1], [0])
  zeros = ctx.make_node('ConstantOfShape', [size64.output[0]], attr={'value': zero},
                        op_name_scope=node.name)
  node.type = 'ScatterElements'
  for attribute in list(node.attr):
    del node.attr[attribute]
  node.set_attr('axis', 0)
  node.set_attr('reduction', 'add')
  ctx.replace_inputs(node, [zeros.output[0], ids64.output[0], flat_data.output[0]])


def _import_tf2onnx():
  try:
    import tf2onnx
  except ImportError:
    raise ValueError("ONNX export needs tf2onnx and onnx: pip install -e '.[onnx]'") from None
  return tf2onnx


def convert_onnx(module: serving.PanopticServingModule, opset: int = ONNX_OPSET) -> bytes:
  """The ONNX model of `module` (float32) with the metadata in `metadata_props`."""
  tf2onnx = _import_tf2onnx()
  function = portable_function(module)
  with xla_context.other_runtime():
    concrete = function.get_concrete_function()
    model_proto, _ = tf2onnx.convert.from_function(
        function, input_signature=concrete.structured_input_signature[0], opset=opset,
        custom_op_handlers={'Erfc': (_erfc_as_one_minus_erf, []),
                            'ResizeBilinear': (_resize_by_sizes, []),
                            'ResizeNearestNeighbor': (_resize_by_sizes, []),
                            'UnsortedSegmentSum': (_unsorted_segment_sum_by_scatter, [])})
  # tf2onnx names outputs after the graph's tensors: use the map keys instead.
  names = dict(zip((output.name for output in concrete.outputs), _output_keys(concrete)))
  for node in model_proto.graph.node:
    node.output[:] = [names.get(value, value) for value in node.output]
  for output in model_proto.graph.output:
    output.name = names.get(output.name, output.name)
  entry = model_proto.metadata_props.add()
  entry.key = METADATA_KEY
  entry.value = json.dumps(file_metadata(module, FORMAT_ONNX, 'none'))
  return model_proto.SerializeToString()


def _output_keys(function) -> Sequence[str]:
  """The dict keys of a concrete function's outputs, in `function.outputs` order."""
  structured = function.structured_outputs
  flat = tf.nest.flatten(structured)
  keys = sorted(structured)  # tf.nest flattens dicts by sorted key.
  if len(flat) != len(function.outputs):
    raise ValueError('unexpected outputs of the portable function')
  return keys


def write_model_file(data: bytes, metadata: Dict[str, Any], output_path, file_name: str) -> str:
  """Writes `<version dir>/<file_name>` and `kmax_metadata.json`; returns the version dir."""
  version_dir = serving.resolve_version_dir(output_path)
  parent = os.path.dirname(version_dir)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f'.tmp-export-{os.path.basename(version_dir)}-', dir=parent)
  try:
    model_dir = os.path.join(staging, 'model')
    os.makedirs(model_dir)
    with tf.io.gfile.GFile(os.path.join(model_dir, file_name), 'wb') as f:
      f.write(data)
    with tf.io.gfile.GFile(os.path.join(model_dir, serving.METADATA_ASSET), 'w') as f:
      f.write(json.dumps(metadata, indent=1))
    if os.path.isdir(version_dir):
      os.rmdir(version_dir)  # Empty (checked by resolve_version_dir).
    os.rename(model_dir, version_dir)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return version_dir


def export_model(config, checkpoint_path: Optional[str], output_path,
                 export_format: str = FORMAT_SAVED_MODEL, quantization: str = 'none',
                 overrides: Sequence[str] = ()) -> Tuple[str, serving.PanopticServingModule]:
  """Builds, restores and exports in one of `FORMATS`.

  Args:
    config: ExperimentOptions or textproto path.
    checkpoint_path: checkpoint to restore (None: random weights, for tests).
    output_path: base path or version directory (see `serving`).
    export_format: 'saved_model', 'tflite' or 'onnx'.
    quantization: TFLite only: one of `QUANTIZATIONS`.
    overrides: config overrides.

  Returns:
    (version directory written, the in-process module).
  """
  if export_format not in FORMATS:
    raise ValueError(f'--format must be one of {", ".join(FORMATS)}, got {export_format!r}.')
  if quantization not in QUANTIZATIONS:
    raise ValueError(f'--quantization must be one of {", ".join(QUANTIZATIONS)}, '
                     f'got {quantization!r}.')
  if quantization != 'none' and export_format != FORMAT_TFLITE:
    raise ValueError(f'--quantization={quantization} is only for --format=tflite.')
  if export_format == FORMAT_SAVED_MODEL:
    return serving.export_saved_model(config, checkpoint_path, output_path, overrides)
  if export_format == FORMAT_ONNX:
    _import_tf2onnx()  # Fail before the slow model build.
  serving.resolve_version_dir(output_path)
  module = serving.build_serving_module(config, checkpoint_path, overrides)
  if export_format == FORMAT_TFLITE:
    data = convert_tflite(module, quantization)
  else:
    data = convert_onnx(module)
  metadata = file_metadata(module, export_format, quantization)
  return write_model_file(data, metadata, output_path, MODEL_FILES[export_format]), module
