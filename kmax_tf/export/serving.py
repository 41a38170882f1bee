"""TF Serving SavedModel export of kMaX-DeepLab panoptic models.

The exported `tf.Module` has these signatures:

* `serving_default` (also `image_tensor`): input `images`, uint8
  [B, H, W, 3] of any batch and size, or a single [H, W, 3] image (treated as
  a batch of one, like DeepLab2's export).
* `float_images`: input `images`, float32 of the same shapes holding [0, 255]
  values, the rule of `Predictor`: checked in the graph (finite, in [0, 255],
  not an image scaled to [0, 1]; a clear error otherwise), rounded and served
  as uint8. A float tensor given to `serving_default` is refused by
  TensorFlow; a numpy float array is cast to uint8 by TensorFlow before the
  graph runs (wrapping values above 255), so floats belong here or in
  `Predictor`, which checks them first.
* `image_bytes`: input `image_bytes`, string [B] of encoded JPEG / PNG / BMP /
  GIF images (what REST clients send as `{"b64": ...}`); each is decoded to
  RGB (grayscale and RGBA are converted). Images of different sizes may share a
  batch: outputs are then padded bottom/right with -1 to the largest image, and
  `image_size` tells each image's own size.

Both return `panoptic_pred`, `semantic_pred`, `instance_pred` (int32
[B, H, W]), `instance_scores`, `semantic_scores` (float32 [B, H, W]) at the
input size and `image_size` (int32 [B, 2], height and width). Inputs are
resized and padded in-graph exactly like evaluation and the maps are restored
to the input size like the evaluator does (see `export.preprocessing`), so the
exported model scores what evaluation scores. Nothing is pinned to a device:
the same SavedModel runs on CPU or GPU.

Everything a client needs to name the predictions (class names, thing ids,
label divisor, colormap, dataset category ids, resize settings) is stored in
the SavedModel twice: as the string variable `kmax_metadata` (JSON) and as the
asset file `assets/kmax_metadata.json`.

Output directory convention (`export_saved_model(output_path=...)`):
* a path whose last component is an integer (e.g. `models/kmax/3`) is the
  version directory itself; it must not exist yet (or be empty);
* any other path is a TF Serving model base path: the model is written to
  `<output_path>/<n>` where n is one more than the largest existing numeric
  version (1 for a new base path). Existing versions are never overwritten.
The model is written to a hidden temporary folder next to the version folder
and renamed into place when complete, so TF Serving never sees a partial
version.
"""

import json
import os
import re
import uuid
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import tensorflow as tf
from absl import logging

import kmax_tf
from kmax_tf import common
from kmax_tf import file_io
from kmax_tf.config import loader
from kmax_tf.data import dataset_descriptors
from kmax_tf.data import preprocessing as data_preprocessing
from kmax_tf.export import preprocessing
from kmax_tf.protos import config_pb2

METADATA_FORMAT = 'kmax_tf.panoptic_saved_model.v1'
METADATA_VARIABLE = 'kmax_metadata'
METADATA_ASSET = 'kmax_metadata.json'

SIGNATURE_IMAGE_TENSOR = 'image_tensor'
SIGNATURE_IMAGE_BYTES = 'image_bytes'
SIGNATURE_FLOAT_IMAGES = 'float_images'
INPUT_IMAGES = 'images'
INPUT_IMAGE_BYTES = 'image_bytes'
IMAGE_SIZE_KEY = 'image_size'

# Model outputs the signatures return (all at the input image size).
INT_MAP_KEYS = (common.PRED_PANOPTIC_KEY, common.PRED_SEMANTIC_KEY, common.PRED_INSTANCE_KEY)
FLOAT_MAP_KEYS = (common.PRED_INSTANCE_SCORES_KEY, common.PRED_SEMANTIC_SCORES_KEY)
MAP_KEYS = INT_MAP_KEYS + FLOAT_MAP_KEYS
OUTPUT_KEYS = MAP_KEYS + (IMAGE_SIZE_KEY,)

_VERSION_PATTERN = re.compile(r'^\d+$')


def _map_dtype(key: str) -> tf.DType:
  return tf.int32 if key in INT_MAP_KEYS else tf.float32


def export_metadata(descriptor, spec: preprocessing.ResizeSpec,
                    experiment_name: str = '') -> Dict[str, Any]:
  """The JSON-serialisable facts stored with the SavedModel."""
  category_ids = descriptor.dataset_category_ids
  return {
      'format': METADATA_FORMAT,
      'kmax_tf_version': kmax_tf.__version__,
      'experiment_name': experiment_name,
      'dataset': descriptor.name,
      'num_classes': int(descriptor.num_classes),
      'class_names': list(descriptor.class_names),
      'colormap': [list(map(int, color)) for color in descriptor.colormap],
      'thing_class_ids': [int(c) for c in descriptor.class_has_instances_list],
      'panoptic_label_divisor': int(descriptor.panoptic_label_divisor),
      'ignore_label': int(descriptor.ignore_label),
      'dataset_category_ids': None if category_ids is None else [int(c) for c in category_ids],
      'resize': spec.to_json(),
      'signatures': {
          'serving_default': {'inputs': [INPUT_IMAGES], 'outputs': list(OUTPUT_KEYS)},
          SIGNATURE_IMAGE_TENSOR: {'inputs': [INPUT_IMAGES], 'outputs': list(OUTPUT_KEYS)},
          SIGNATURE_IMAGE_BYTES: {'inputs': [INPUT_IMAGE_BYTES], 'outputs': list(OUTPUT_KEYS)},
          SIGNATURE_FLOAT_IMAGES: {'inputs': [INPUT_IMAGES], 'outputs': list(OUTPUT_KEYS)},
      },
  }


def _as_image_batch(images: tf.Tensor) -> tf.Tensor:
  """uint8 [H, W, 3] or [B, H, W, 3] -> [B, H, W, 3], with in-graph checks."""
  checks = [
      tf.debugging.assert_rank_in(
          images, [3, 4], message='images must be uint8 [batch, height, width, 3] or '
          '[height, width, 3]'),
  ]
  with tf.control_dependencies(checks):
    shape = tf.shape(images)
  checks = [tf.debugging.assert_equal(shape[-1], 3, message='images must have 3 (RGB) channels')]
  with tf.control_dependencies(checks):
    batch = tf.reshape(images, tf.concat([[-1], shape[-3:]], axis=0))
  batch.set_shape([None, None, None, 3])
  return batch


class PanopticServingModule(tf.Module):
  """End-to-end panoptic inference on raw images (see the module docstring)."""

  def __init__(self, model, spec: preprocessing.ResizeSpec, metadata: Dict[str, Any]):
    """Initializes the module.

    Args:
      model: a built KMaXDeepLab (at the eval crop) with its weights.
      spec: the evaluation resize settings.
      metadata: `export_metadata(...)`.
    """
    super().__init__(name='kmax_panoptic')
    # The Keras model is kept out of the object graph (its own SavedModel
    # serialisation is slow and not needed); its variables are tracked.
    self.__dict__['_model'] = model
    self.model_variables = list(model.variables)
    self._spec = spec
    # Kept as JSON text: tf.Module would wrap a dict attribute for tracking.
    self._metadata_json = json.dumps(metadata)
    self.kmax_metadata = tf.Variable(self._metadata_json, trainable=False,
                                     dtype=tf.string, name=METADATA_VARIABLE)

  @property
  def metadata(self) -> Dict[str, Any]:
    return json.loads(self._metadata_json)

  @property
  def model(self):
    """The wrapped KMaXDeepLab."""
    return self.__dict__['_model']

  @property
  def spec(self) -> preprocessing.ResizeSpec:
    return self._spec

  def _predict_crops(self, padded: tf.Tensor) -> Dict[str, tf.Tensor]:
    """float32 [B, crop_h, crop_w, 3] -> maps at the crop size."""
    outputs = self._model(padded, training=False)
    return {key: tf.cast(outputs[key], _map_dtype(key)) for key in MAP_KEYS}

  @tf.function(input_signature=[tf.TensorSpec(None, tf.uint8, name=INPUT_IMAGES)])
  def serve_images(self, images):
    """Panoptic maps of uint8 [B, H, W, 3] (or [H, W, 3]) images; see module docstring."""
    images = _as_image_batch(images)
    shape = tf.shape(images)
    raw_size = shape[1:3]
    maps = self._predict_crops(preprocessing.preprocess_batch(images, self._spec))
    resized = preprocessing.resized_size(raw_size, self._spec)
    outputs = {key: data_preprocessing.undo_preprocessing(value, resized, raw_size)
               for key, value in maps.items()}
    outputs[IMAGE_SIZE_KEY] = tf.tile(raw_size[None], [shape[0], 1])
    return outputs

  @tf.function(input_signature=[tf.TensorSpec(None, tf.float32, name=INPUT_IMAGES)])
  def serve_float_images(self, images):
    """`serve_images` for float32 images holding [0, 255] values, checked in the graph."""
    low, high = tf.reduce_min(images), tf.reduce_max(images)
    checks = [
        tf.debugging.assert_all_finite(images, 'float images have NaN or infinite values'),
        tf.debugging.Assert(
            tf.logical_and(low >= 0.0, high <= 255.0),
            ['float images must hold values in [0, 255]; got values in', low, high,
             '(pass uint8, or scale the image first)']),
        tf.debugging.Assert(
            tf.logical_not(tf.logical_and(high > 0.0, high <= 1.0)),
            ['float image values lie in [0, 1]: it looks scaled to [0, 1], but float images '
             'must hold [0, 255] values. Multiply by 255 (or pass uint8). Max value:', high]),
    ]
    with tf.control_dependencies(checks):
      pixels = tf.cast(tf.round(images), tf.uint8)
    return self.serve_images(pixels)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_IMAGE_BYTES)])
  def serve_image_bytes(self, image_bytes):
    """Panoptic maps of string [B] encoded images; see module docstring."""
    encoded = image_bytes
    crop_h, crop_w = self._spec.crop_size

    def prepare(data):
      image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
      raw_size = tf.shape(image)[:2]
      return (preprocessing.preprocess_image(image, self._spec), raw_size,
              preprocessing.resized_size(raw_size, self._spec))

    padded, raw_sizes, resized_sizes = tf.map_fn(
        prepare, encoded, fn_output_signature=(
            tf.TensorSpec([crop_h, crop_w, 3], tf.float32), tf.TensorSpec([2], tf.int32),
            tf.TensorSpec([2], tf.int32)))
    maps = self._predict_crops(padded)
    max_size = tf.reduce_max(tf.concat([raw_sizes, tf.zeros([1, 2], tf.int32)], 0), axis=0)

    def restore(args):
      image_maps, raw_size, resized = args
      return {key: preprocessing.pad_to_size(
          data_preprocessing.undo_preprocessing(value[None], resized, raw_size)[0], max_size)
              for key, value in image_maps.items()}

    outputs = tf.map_fn(restore, (maps, raw_sizes, resized_sizes), fn_output_signature={
        key: tf.TensorSpec([None, None], _map_dtype(key)) for key in MAP_KEYS})
    outputs[IMAGE_SIZE_KEY] = raw_sizes
    return outputs

  def signatures(self) -> Dict[str, Any]:
    images_fn = self.serve_images.get_concrete_function()
    return {'serving_default': images_fn, SIGNATURE_IMAGE_TENSOR: images_fn,
            SIGNATURE_IMAGE_BYTES: self.serve_image_bytes.get_concrete_function(),
            SIGNATURE_FLOAT_IMAGES: self.serve_float_images.get_concrete_function()}


def _copy_config(config) -> config_pb2.ExperimentOptions:
  copied = config_pb2.ExperimentOptions()
  copied.CopyFrom(config)
  return copied


def load_experiment_config(config: Union[str, os.PathLike, config_pb2.ExperimentOptions],
                           overrides: Sequence[str] = (),
                           substitutions: Optional[Dict[str, str]] = None
                           ) -> config_pb2.ExperimentOptions:
  """An ExperimentOptions from a textproto path (with overrides) or a proto (copied)."""
  if isinstance(config, config_pb2.ExperimentOptions):
    config = _copy_config(config)
    for override in overrides:
      loader.apply_override(config, override, substitutions)
    return config
  path = os.fspath(config)
  if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
    raise ValueError(f'Config file {path!r} does not exist.')
  # Placeholders (e.g. ${TRAIN_SET}) are irrelevant for inference.
  defaults = {name: name for name in _placeholders(os.fspath(config))}
  defaults.update(substitutions or {})
  return loader.load_config(config, substitutions=defaults, overrides=overrides)


def _placeholders(path: str):
  with tf.io.gfile.GFile(path) as f:
    return loader.unresolved_placeholders(f.read())


def restore_weights(model, checkpoint_path: str) -> None:
  """Restores every model weight from a DeepLab2 or kmax_tf training checkpoint.

  Training state (step, optimizers, the kmax_tf input-iterator position) is
  ignored; a missing, unknown or mis-shaped model weight is an error.
  """
  from kmax_tf.model import checkpoint_loading
  checkpoint_loading.load_deeplab2_checkpoint(model, checkpoint_path, kind='full')


def build_serving_module(config, checkpoint_path: Optional[str],
                         overrides: Sequence[str] = ()) -> PanopticServingModule:
  """Builds the model at the eval crop, restores `checkpoint_path`, wraps it.

  Args:
    config: ExperimentOptions or a textproto path.
    checkpoint_path: checkpoint prefix / directory (DeepLab2 or kmax_tf
      training checkpoint); None keeps random weights (logged as a warning).
    overrides: config overrides (see `load_config`).

  Returns:
    A PanopticServingModule.
  """
  from kmax_tf.model import builder  # Heavy imports only when a model is built.

  config = load_experiment_config(config, overrides)
  eval_options = config.eval_dataset_options
  spec = preprocessing.ResizeSpec.from_dataset_options(eval_options)
  descriptor = dataset_descriptors.descriptor_from_options(eval_options)
  # The network runs at the eval crop; training-only settings are switched off
  # and the pretrained backbone file is not needed (the checkpoint has it all).
  config.train_dataset_options.crop_size[:] = list(spec.crop_size)
  config.model_options.backbone.drop_path_keep_prob = 1.0
  config.model_options.backbone.ClearField('pretrained_weights')
  model = builder.build_model(config, dataset_descriptor=descriptor)
  if checkpoint_path:
    restore_weights(model, checkpoint_path)
  else:
    logging.warning('No checkpoint given: the exported model has RANDOM weights.')
  metadata = export_metadata(descriptor, spec, config.experiment_name)
  metadata['checkpoint_path'] = os.fspath(checkpoint_path) if checkpoint_path else None
  return PanopticServingModule(model, spec, metadata)


def _absolute(path) -> str:
  path = os.fspath(path)
  return path if file_io.is_remote(path) else os.path.abspath(path)


def _listdir(path: str):
  return [entry.rstrip('/') for entry in tf.io.gfile.listdir(path)]


def resolve_version_dir(output_path: Union[str, os.PathLike]) -> str:
  """The numbered version directory to write (see the module docstring)."""
  output_path = _absolute(output_path).rstrip('/')
  name = os.path.basename(output_path)
  if _VERSION_PATTERN.match(name):
    if tf.io.gfile.exists(output_path) and (not tf.io.gfile.isdir(output_path)
                                            or _listdir(output_path)):
      raise ValueError(f'Version directory {output_path} already exists and is not empty; '
                       'refusing to overwrite it. Pass the base path to get the next version.')
    return output_path
  if tf.io.gfile.exists(os.path.join(output_path, 'saved_model.pb')):
    raise ValueError(f'{output_path} already holds a SavedModel; refusing to overwrite it. '
                     'Pass a base path (versions go to <base>/<n>) or a new numbered directory.')
  if tf.io.gfile.exists(output_path) and not tf.io.gfile.isdir(output_path):
    raise ValueError(f'--output_path {output_path} is a file, not a directory.')
  versions = []
  if tf.io.gfile.isdir(output_path):
    versions = [int(entry) for entry in _listdir(output_path) if _VERSION_PATTERN.match(entry)]
  return os.path.join(output_path, str(max(versions, default=0) + 1))


def _publish(model_dir: str, version_dir: str) -> None:
  """Moves the saved model into `version_dir`, saved_model.pb last.

  On a local disk the folder is renamed (atomic). Other file systems (gs://,
  ram://) cannot rename a folder in one step: the files are copied with
  saved_model.pb last, so the version counts as a SavedModel only once
  complete.
  """
  if not file_io.is_remote(version_dir):
    if tf.io.gfile.isdir(version_dir):
      tf.io.gfile.rmtree(version_dir)  # Empty (checked by resolve_version_dir).
    tf.io.gfile.rename(model_dir, version_dir)
    return
  last = None
  for folder, _, files in tf.io.gfile.walk(model_dir):
    target = version_dir + folder[len(model_dir):]
    tf.io.gfile.makedirs(target)
    for name in files:
      if folder.rstrip('/') == model_dir.rstrip('/') and name == 'saved_model.pb':
        last = (os.path.join(folder, name), os.path.join(target, name))
        continue
      tf.io.gfile.copy(os.path.join(folder, name), os.path.join(target, name))
  if last is not None:
    tf.io.gfile.copy(*last)


def save_module(module: PanopticServingModule, output_path) -> str:
  """Saves `module` as a TF Serving version folder; returns its path."""
  version_dir = resolve_version_dir(output_path)
  parent = os.path.dirname(version_dir)
  tf.io.gfile.makedirs(parent)
  staging = os.path.join(parent, f'.tmp-export-{os.path.basename(version_dir)}-'
                         f'{uuid.uuid4().hex[:12]}')
  try:
    metadata_file = os.path.join(staging, 'metadata_source', METADATA_ASSET)
    tf.io.gfile.makedirs(os.path.dirname(metadata_file))
    with tf.io.gfile.GFile(metadata_file, 'w') as f:
      f.write(json.dumps(module.metadata, indent=1))
    module.metadata_asset = tf.saved_model.Asset(metadata_file)
    model_dir = os.path.join(staging, 'model')
    # No device scope and no device saving: the graph stays device-free.
    tf.saved_model.save(module, model_dir, signatures=module.signatures(),
                        options=tf.saved_model.SaveOptions(save_debug_info=False))
    _publish(model_dir, version_dir)
  finally:
    if tf.io.gfile.exists(staging):
      tf.io.gfile.rmtree(staging)
  return version_dir


def export_saved_model(config, checkpoint_path: Optional[str], output_path,
                       overrides: Sequence[str] = ()) -> Tuple[str, PanopticServingModule]:
  """Builds, restores and saves a serving SavedModel.

  Args:
    config: ExperimentOptions or textproto path.
    checkpoint_path: checkpoint to restore (None: random weights, for tests).
    output_path: base path or version directory (see the module docstring).
    overrides: config overrides.

  Returns:
    (version directory written, the in-process module).
  """
  resolve_version_dir(output_path)  # Fail before the slow model build.
  module = build_serving_module(config, checkpoint_path, overrides)
  return save_module(module, output_path), module
