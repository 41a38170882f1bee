"""DeepLab2's released checkpoints by name: download, verify, cache and load.

  predictor = kmax_tf.Predictor.from_pretrained('kmax_r50_coco')
  model = kmax_tf.build_model(kmax_tf.pretrained.load_config('kmax_r50_coco'))
  kmax_tf.load_pretrained(model, 'kmax_r50_coco')

Anywhere a checkpoint path is read (`initial_checkpoint`,
`backbone.pretrained_weights`, `--checkpoint_path`), `pretrained:NAME` names a
registered model: it is downloaded on first use and its cached checkpoint
prefix is used. `python -m kmax_tf.pretrained list|download NAME|path NAME`
manages the cache from the shell. The registry is `registry.json` (see
`registry.py`); the cache, offline mode and mirrors are described in
`cache.py`.
"""

from typing import Optional, Sequence, Tuple

from kmax_tf.pretrained.cache import CachedModel
from kmax_tf.pretrained.cache import cache_root
from kmax_tf.pretrained.cache import cached_model
from kmax_tf.pretrained.registry import KIND_KMAX
from kmax_tf.pretrained.registry import REFERENCE_PREFIX
from kmax_tf.pretrained.registry import ModelEntry
from kmax_tf.pretrained.registry import PretrainedError
from kmax_tf.pretrained.registry import get_model
from kmax_tf.pretrained.registry import list_models

__all__ = [
    'CachedModel', 'ModelEntry', 'PretrainedError', 'REFERENCE_PREFIX', 'cache_root',
    'cached_checkpoint_path', 'cached_model', 'checkpoint_path', 'download', 'get_model',
    'inference_inputs', 'is_reference', 'list_models', 'load_config', 'load_pretrained',
    'resolve_reference',
]


def download(name: str, progress: bool = True) -> CachedModel:
  """Makes sure `name` is in the cache (downloading it if needed); returns it."""
  from kmax_tf.pretrained import cache
  return cache.ensure_cached(get_model(name), progress=progress)


def checkpoint_path(name: str, progress: bool = True) -> str:
  """The cached checkpoint prefix of `name`, downloaded first if needed."""
  return download(name, progress=progress).checkpoint_path


def cached_checkpoint_path(name: str) -> Optional[str]:
  """The cached checkpoint prefix of `name`, or None if it is not downloaded."""
  cached = cached_model(get_model(name))
  return cached.checkpoint_path if cached else None


def is_reference(path) -> bool:
  """Whether `path` is a 'pretrained:NAME' reference."""
  return isinstance(path, str) and path.startswith(REFERENCE_PREFIX)


def resolve_reference(path):
  """'pretrained:NAME' -> its cached checkpoint prefix (downloading it); other paths unchanged."""
  if not is_reference(path):
    return path
  return checkpoint_path(path[len(REFERENCE_PREFIX):])


def _config_file(entry: ModelEntry) -> str:
  path = entry.config_path()
  if not path.is_file():
    raise PretrainedError(
        f'Config {entry.config} of pretrained model {entry.name!r} not found at {path} (configs/ '
        'comes with the kmax_tf repository checkout); pass the config file explicitly.')
  return str(path)


def load_config(name: str, overrides: Sequence[str] = (), config=None, substitutions=None):
  """The ExperimentOptions of a registered model, ready to build it.

  Placeholders (`${TRAIN_SET}`, ...) are kept as their names. For a kMaX
  model, `initial_checkpoint` becomes 'pretrained:NAME' and the backbone's
  `pretrained_weights` is cleared (the checkpoint holds every weight); for an
  ImageNet backbone, the field DeepLab2 reads it from (`initial_checkpoint` or
  `backbone.pretrained_weights`) becomes 'pretrained:NAME'.

  Args:
    name: registry name.
    overrides: config overrides, applied after the registry's own.
    config: another config file (or ExperimentOptions) to use instead of the
      registry's.
    substitutions: {NAME: value} for `${NAME}` placeholders.
  """
  from kmax_tf.export import serving  # (TensorFlow)
  entry = get_model(name)
  source = _config_file(entry) if config is None else config
  options = serving.load_experiment_config(
      source, overrides=list(entry.overrides) + list(overrides), substitutions=substitutions)
  reference = REFERENCE_PREFIX + entry.name
  if entry.kind == KIND_KMAX:
    options.model_options.initial_checkpoint = reference
    options.model_options.backbone.ClearField('pretrained_weights')
  elif entry.restore == 'pretrained_weights':
    options.model_options.backbone.pretrained_weights = reference
  else:
    options.model_options.initial_checkpoint = reference
  return options


def inference_inputs(name: str, overrides: Sequence[str] = (), config=None,
                     substitutions=None, progress: bool = True) -> Tuple[object, str]:
  """(ExperimentOptions, cached checkpoint prefix) of a kMaX model, for prediction or export."""
  entry = get_model(name)
  if entry.kind != KIND_KMAX:
    raise PretrainedError(f'{entry.name!r} is an ImageNet backbone checkpoint, not a panoptic '
                          'model; pick a kmax_* model (python -m kmax_tf.pretrained list).')
  options = load_config(name, overrides, config=config, substitutions=substitutions)
  return options, checkpoint_path(name, progress=progress)


def load_pretrained(model, name: str, *, skip_semantic_last_layer: bool = False,
                    strict: bool = True, progress: bool = True):
  """Restores registered model `name` into a built `model` (downloading it first if needed).

  Args:
    model: a built KMaXDeepLab (e.g. `kmax_tf.build_model(config)`), or a dict
      of checkpoint items.
    name: registry name.
    skip_semantic_last_layer: keep the class-dependent last layers (another
      number of classes); see `load_deeplab2_checkpoint`.
    strict: see `load_deeplab2_checkpoint`.
    progress: show the download progress.

  Returns:
    The RestoreSummary of `kmax_tf.load_deeplab2_checkpoint`.
  """
  from kmax_tf.model import checkpoint_loading  # (TensorFlow)
  entry = get_model(name)
  return checkpoint_loading.load_deeplab2_checkpoint(
      model, checkpoint_path(name, progress=progress), kind=entry.restore,
      skip_semantic_last_layer=skip_semantic_last_layer, strict=strict)
