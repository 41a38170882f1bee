"""One-image panoptic prediction from a checkpoint or an exported SavedModel.

Example:
  predictor = kmax_tf.Predictor.from_saved_model('exported/kmax')      # or
  predictor = kmax_tf.Predictor.from_pretrained('kmax_r50_coco')      # or
  predictor = kmax_tf.Predictor.from_tflite('exported/kmax_tflite')    # or .from_onnx(...)
  predictor = kmax_tf.Predictor.from_checkpoint('config.textproto', 'ckpt-150000')
  result = predictor('photo.jpg')          # a path, PIL image or uint8 array
  result.panoptic                          # int32 [H, W], class * divisor + instance
  for segment in result.segments:
    print(segment.category_name, segment.is_thing, segment.area, segment.score)

Both constructors run the same in-graph pipeline (`serving.PanopticServingModule`),
so a checkpoint and its export give the same maps.
"""

import dataclasses
import json
import os
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from kmax_tf import common
from kmax_tf import file_io
from kmax_tf.export import image_io
from kmax_tf.export import serving

_REQUIRED_METADATA = ('class_names', 'colormap', 'thing_class_ids', 'panoptic_label_divisor',
                      'ignore_label', 'num_classes', 'dataset_category_ids')


@dataclasses.dataclass(frozen=True)
class Segment:
  """One predicted segment.

  Attributes:
    id: its panoptic label, class_id * label_divisor + instance id.
    class_id: contiguous (training) class id.
    category_id: the dataset's own category id (e.g. COCO's).
    category_name: class name.
    is_thing: whether the class has instances.
    area: number of pixels.
    score: mean instance score of its pixels.
    bbox: (x, y, width, height) in pixels.
  """

  id: int
  class_id: int
  category_id: int
  category_name: str
  is_thing: bool
  area: int
  score: float
  bbox: Tuple[int, int, int, int]

  def to_json(self) -> Dict[str, Any]:
    return dataclasses.asdict(self) | {'bbox': list(self.bbox)}


@dataclasses.dataclass
class PanopticPrediction:
  """Predictions for one image, at its size.

  Attributes:
    image: uint8 [H, W, 3], the RGB image the model saw.
    panoptic: int32 [H, W], class_id * label_divisor + instance id.
    semantic: int32 [H, W] class ids.
    instance: int32 [H, W] instance ids (0 for stuff).
    instance_scores: float32 [H, W].
    semantic_scores: float32 [H, W].
    segments: the segments of `panoptic` (void excluded), by panoptic id.
  """

  image: np.ndarray
  panoptic: np.ndarray
  semantic: np.ndarray
  instance: np.ndarray
  instance_scores: np.ndarray
  semantic_scores: np.ndarray
  segments: List[Segment]


def _check_metadata(metadata: Dict[str, Any], source: str) -> Dict[str, Any]:
  missing = [key for key in _REQUIRED_METADATA if key not in metadata]
  if metadata.get('format') != serving.METADATA_FORMAT or missing:
    raise ValueError(f'{source}: kmax_metadata is not a {serving.METADATA_FORMAT} record '
                     f'(format {metadata.get("format")!r}, missing {missing}).')
  return metadata


def find_saved_model_dir(path) -> str:
  """`path` itself if it holds saved_model.pb, else its highest numeric version."""
  path = os.fspath(path)
  if not file_io.is_remote(path):
    path = os.path.abspath(path)
  path = path.rstrip('/')
  if not tf.io.gfile.isdir(path):
    raise ValueError(f'SavedModel directory {path} does not exist.')
  if tf.io.gfile.exists(os.path.join(path, 'saved_model.pb')):
    return path
  names = [name.rstrip('/') for name in tf.io.gfile.listdir(path)]
  versions = [int(name) for name in names if re.match(r'^\d+$', name)
              and tf.io.gfile.exists(os.path.join(path, name, 'saved_model.pb'))]
  if not versions:
    raise ValueError(f'{path} is neither a SavedModel (no saved_model.pb) nor a TF Serving base '
                     'path with numbered SavedModel versions.')
  return os.path.join(path, str(max(versions)))


def load_saved_model(path) -> Tuple[Any, Dict[str, Any], str]:
  """Loads an export; returns (loaded object, metadata dict, version directory).

  Raises:
    ValueError: not a SavedModel, or a SavedModel that kmax_tf did not export.
  """
  directory = find_saved_model_dir(path)
  try:
    loaded = tf.saved_model.load(directory)
  except (OSError, ValueError, tf.errors.OpError) as error:
    raise ValueError(f'Cannot load the SavedModel in {directory}: {error}') from None
  variable = getattr(loaded, serving.METADATA_VARIABLE, None)
  if variable is None or 'serving_default' not in loaded.signatures:
    raise ValueError(f'{directory} is a SavedModel but not a kmax_tf panoptic export (it has no '
                     f'{serving.METADATA_VARIABLE}); export one with export_model.py.')
  try:
    metadata = json.loads(variable.numpy().decode('utf-8'))
  except (AttributeError, ValueError) as error:
    raise ValueError(f'{directory}: unreadable {serving.METADATA_VARIABLE} ({error}).') from None
  signature = loaded.signatures['serving_default']
  inputs = signature.structured_input_signature[1]
  if serving.INPUT_IMAGES not in inputs or not set(serving.MAP_KEYS) <= set(
      signature.structured_outputs):
    raise ValueError(f'{directory}: serving_default does not take {serving.INPUT_IMAGES!r} and '
                     f'return {list(serving.MAP_KEYS)}.')
  return loaded, _check_metadata(metadata, directory), directory


def segments_from_maps(panoptic: np.ndarray, instance_scores: np.ndarray,
                       metadata: Dict[str, Any]) -> List[Segment]:
  """The non-void segments of a panoptic map, sorted by panoptic id.

  Args:
    panoptic: int [H, W], class_id * label_divisor + instance id.
    instance_scores: float [H, W].
    metadata: export metadata (class names, thing ids, divisor, ...).
  """
  divisor = int(metadata['panoptic_label_divisor'])
  num_classes = int(metadata['num_classes'])
  things = set(metadata['thing_class_ids'])
  category_ids = metadata['dataset_category_ids'] or list(range(num_classes))
  labels, inverse, areas = np.unique(np.asarray(panoptic, np.int64), return_inverse=True,
                                     return_counts=True)
  inverse = inverse.reshape(np.shape(panoptic))
  score_sums = np.bincount(inverse.ravel(), weights=np.asarray(instance_scores).ravel(),
                           minlength=len(labels))
  segments = []
  for index, label in enumerate(labels.tolist()):
    class_id = label // divisor
    if class_id == metadata['ignore_label'] or not 0 <= class_id < num_classes:
      continue
    mask = inverse == index
    rows = np.flatnonzero(mask.any(axis=1))
    columns = np.flatnonzero(mask.any(axis=0))
    segments.append(Segment(
        id=int(label), class_id=int(class_id), category_id=int(category_ids[class_id]),
        category_name=str(metadata['class_names'][class_id]), is_thing=class_id in things,
        area=int(areas[index]), score=float(score_sums[index] / areas[index]),
        bbox=(int(columns[0]), int(rows[0]), int(columns[-1] - columns[0] + 1),
              int(rows[-1] - rows[0] + 1))))
  return segments


class Predictor:
  """Panoptic segmentation of single images (see the module docstring)."""

  def __init__(self, serve_fn: Callable[[tf.Tensor], Dict[str, tf.Tensor]],
               metadata: Dict[str, Any], source: str = ''):
    """Use `from_checkpoint` or `from_saved_model`.

    Args:
      serve_fn: uint8 [B, H, W, 3] -> dict with the `serving.MAP_KEYS` maps.
      metadata: export metadata (see `serving.export_metadata`).
      source: where the model came from, for messages.
    """
    self._serve_fn = serve_fn
    self._metadata = _check_metadata(dict(metadata), source or 'metadata')
    self.source = source

  @classmethod
  def from_checkpoint(cls, config, checkpoint_path: Optional[str],
                      overrides: Sequence[str] = ()) -> 'Predictor':
    """From an ExperimentOptions (or textproto path) and a checkpoint.

    `checkpoint_path=None` keeps random weights (for trying the pipeline).
    """
    module = serving.build_serving_module(config, checkpoint_path, overrides)
    predictor = cls(module.serve_images, module.metadata, source=str(checkpoint_path))
    predictor._module = module  # Keeps the model alive with the predictor.
    return predictor

  @classmethod
  def from_pretrained(cls, name: str, overrides: Sequence[str] = (), config=None
                      ) -> 'Predictor':
    """From a released model by name, e.g. 'kmax_r50_coco' (downloaded and cached).

    `config` replaces the registry's config file; see `kmax_tf.pretrained`.
    """
    from kmax_tf import pretrained
    options, checkpoint = pretrained.inference_inputs(name, overrides, config=config)
    predictor = cls.from_checkpoint(options, checkpoint)
    predictor.source = f'pretrained:{name} ({checkpoint})'
    return predictor

  @classmethod
  def from_saved_model(cls, path) -> 'Predictor':
    """From an export of `export_model.py` (version dir or TF Serving base path)."""
    loaded, metadata, directory = load_saved_model(path)
    signature = loaded.signatures['serving_default']

    def serve(images):
      return signature(**{serving.INPUT_IMAGES: images})

    predictor = cls(serve, metadata, source=directory)
    predictor._loaded = loaded
    return predictor

  @classmethod
  def from_tflite(cls, path, num_threads: Optional[int] = None) -> 'Predictor':
    """From a LiteRT export (`export_model.py --format=tflite`), run by ai-edge-litert.

    Args:
      path: the .tflite file, its version folder or the base path (highest version).
      num_threads: interpreter threads (None: LiteRT's default).
    """
    from kmax_tf.export import runtimes
    serve, metadata, file_path = runtimes.load_tflite(path, num_threads)
    return cls(serve, metadata, source=file_path)

  @classmethod
  def from_onnx(cls, path, num_threads: Optional[int] = None) -> 'Predictor':
    """From an ONNX export (`export_model.py --format=onnx`), run by ONNX Runtime on CPU.

    Args:
      path: the .onnx file, its version folder or the base path (highest version).
      num_threads: intra-op threads (None: ONNX Runtime's default).
    """
    from kmax_tf.export import runtimes
    serve, metadata, file_path = runtimes.load_onnx(path, num_threads)
    return cls(serve, metadata, source=file_path)

  @classmethod
  def from_export(cls, path) -> 'Predictor':
    """From any export of `export_model.py`; the runtime is picked from what `path` holds."""
    from kmax_tf.export import runtimes
    constructors = {'saved_model': cls.from_saved_model, 'tflite': cls.from_tflite,
                    'onnx': cls.from_onnx}
    return constructors[runtimes.detect_format(path)](path)

  @property
  def metadata(self) -> Dict[str, Any]:
    """Class names, colormap, thing ids, label divisor, ... (a copy)."""
    return json.loads(json.dumps(self._metadata))

  @property
  def class_names(self) -> List[str]:
    return list(self._metadata['class_names'])

  def __call__(self, image: image_io.ImageLike) -> PanopticPrediction:
    """Predicts one image: a file path, PIL image or array (see image_io.to_rgb_uint8)."""
    rgb = image_io.to_rgb_uint8(image)
    outputs = self._serve_fn(tf.constant(rgb[None]))
    maps = {key: outputs[key].numpy()[0] for key in serving.MAP_KEYS}
    panoptic = maps[common.PRED_PANOPTIC_KEY]
    instance_scores = maps[common.PRED_INSTANCE_SCORES_KEY]
    return PanopticPrediction(
        image=rgb, panoptic=panoptic, semantic=maps[common.PRED_SEMANTIC_KEY],
        instance=maps[common.PRED_INSTANCE_KEY], instance_scores=instance_scores,
        semantic_scores=maps[common.PRED_SEMANTIC_SCORES_KEY],
        segments=segments_from_maps(panoptic, instance_scores, self._metadata))
