"""Running LiteRT (TFLite) and ONNX exports of `export.portable` for `Predictor`.

Each loader returns a serve function with the contract of the SavedModel's
`serving_default` for a batch of one (uint8 [1, H, W, 3] -> dict of the
`serving.MAP_KEYS` maps [1, H, W]) and the metadata embedded in the file.

A path is a model file, a version folder holding one (`model.tflite` /
`model.onnx`), or a base path whose highest numeric version holds one.
"""

import json
import os
import re
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from kmax_tf.export import portable
from kmax_tf.export import serving

ServeFn = Callable[[tf.Tensor], Dict[str, tf.Tensor]]
_TFLITE_IDENTIFIER = b'TFL3'  # Flatbuffer file identifier, bytes 4..8 of a LiteRT model.


def find_model_file(path, export_format: str) -> str:
  """The `export_format` ('tflite' / 'onnx') model file that `path` names (see module doc)."""
  file_name = portable.MODEL_FILES[export_format]
  path = os.path.abspath(os.fspath(path))
  if os.path.isfile(path):
    return path
  if not os.path.isdir(path):
    raise ValueError(f'{export_format} model {path} does not exist.')
  if os.path.isfile(os.path.join(path, file_name)):
    return os.path.join(path, file_name)
  versions = [int(name) for name in os.listdir(path) if re.match(r'^\d+$', name)
              and os.path.isfile(os.path.join(path, name, file_name))]
  if not versions:
    raise ValueError(f'{path} holds no {file_name}, neither itself nor in a numbered version '
                     'folder.')
  return os.path.join(path, str(max(versions)), file_name)


def detect_format(path) -> str:
  """'saved_model', 'tflite' or 'onnx': what `path` (file, version folder, base path) holds."""
  path = os.path.abspath(os.fspath(path))
  if os.path.isfile(path):
    with open(path, 'rb') as f:
      head = f.read(8)
    if head[4:8] == _TFLITE_IDENTIFIER:
      return portable.FORMAT_TFLITE
    if path.endswith('.onnx'):
      return portable.FORMAT_ONNX
    raise ValueError(f'{path} is neither a LiteRT (.tflite) nor an ONNX (.onnx) model file.')
  if not os.path.isdir(path):
    raise ValueError(f'Model {path} does not exist.')
  candidates = [path] + sorted(
      (os.path.join(path, name) for name in os.listdir(path) if re.match(r'^\d+$', name)),
      key=lambda folder: int(os.path.basename(folder)), reverse=True)
  for folder in candidates:
    if os.path.isfile(os.path.join(folder, 'saved_model.pb')):
      return portable.FORMAT_SAVED_MODEL
    for export_format, file_name in portable.MODEL_FILES.items():
      if os.path.isfile(os.path.join(folder, file_name)):
        return export_format
  raise ValueError(f'{path} holds no export of export_model.py (no saved_model.pb, model.tflite '
                   'or model.onnx, itself or in a numbered version folder).')


def _metadata_or_error(metadata: Optional[Dict[str, Any]], source: str) -> Dict[str, Any]:
  if metadata is None:
    raise ValueError(f'{source} has no {portable.METADATA_KEY}: it is not a kmax_tf panoptic '
                     'export (export one with export_model.py --format=...).')
  return metadata


def _to_tensors(outputs: Dict[str, np.ndarray]) -> Dict[str, tf.Tensor]:
  return {key: tf.constant(outputs[key]) for key in serving.MAP_KEYS}


def _single_image(images) -> np.ndarray:
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[0] != 1 or images.shape[-1] != 3:
    raise ValueError(f'LiteRT/ONNX exports take one uint8 [1, H, W, 3] image, got shape '
                     f'{images.shape}.')
  return images.astype(np.uint8, copy=False)


def load_tflite(path, num_threads: Optional[int] = None) -> Tuple[ServeFn, Dict[str, Any], str]:
  """(serve function, metadata, model file) of a LiteRT export, run by ai-edge-litert."""
  from ai_edge_litert import interpreter as litert
  file_path = find_model_file(path, portable.FORMAT_TFLITE)
  with tf.io.gfile.GFile(file_path, 'rb') as f:
    model = f.read()
  if model[4:8] != _TFLITE_IDENTIFIER:
    raise ValueError(f'{file_path} is not a LiteRT flatbuffer.')
  metadata = _metadata_or_error(portable.read_tflite_metadata(model), file_path)
  interpreter = litert.Interpreter(model_content=model, num_threads=num_threads)
  runner = interpreter.get_signature_runner()

  def serve(images):
    # The runner resizes its input (and re-plans the graph) when the image size changes.
    return _to_tensors(runner(**{serving.INPUT_IMAGES: _single_image(images)}))

  serve.interpreter = interpreter
  return serve, metadata, file_path


def load_onnx(path, num_threads: Optional[int] = None) -> Tuple[ServeFn, Dict[str, Any], str]:
  """(serve function, metadata, model file) of an ONNX export, run by ONNX Runtime (CPU)."""
  try:
    import onnxruntime
  except ImportError:
    raise ValueError("Running ONNX models needs onnxruntime: pip install -e '.[onnx]'") from None
  file_path = find_model_file(path, portable.FORMAT_ONNX)
  with tf.io.gfile.GFile(file_path, 'rb') as f:
    model = f.read()
  options = onnxruntime.SessionOptions()
  if num_threads:
    options.intra_op_num_threads = num_threads
  try:
    session = onnxruntime.InferenceSession(model, sess_options=options,
                                           providers=['CPUExecutionProvider'])
  except Exception as error:  # ONNX Runtime raises its own (unexported) error types.
    if 'INVALID_PROTOBUF' not in str(error) and 'Protobuf parsing failed' not in str(error):
      raise
    raise ValueError(f'{file_path} is not an ONNX model ({error}).') from None
  text = session.get_modelmeta().custom_metadata_map.get(portable.METADATA_KEY)
  metadata = _metadata_or_error(json.loads(text) if text else None, file_path)
  names = [output.name for output in session.get_outputs()]

  def serve(images):
    values = session.run(names, {serving.INPUT_IMAGES: _single_image(images)})
    return _to_tensors(dict(zip(names, values)))

  serve.session = session
  return serve, metadata, file_path
