"""The registry of released checkpoints: `registry.json`, read into `ModelEntry`s.

The registry is data: one JSON file shipped with the package lists every
released kMaX-DeepLab checkpoint of DeepLab2's model zoo and the ImageNet
checkpoints its configs start from. `KMAX_TF_REGISTRY` may name further JSON
files of the same format (separated by the OS path separator, ':' on Linux);
their entries are added, and replace shipped entries of the same name (private
models, or test archives).

Nothing here imports TensorFlow: `python -m kmax_tf.pretrained list` stays fast.
"""

import dataclasses
import json
import os
import pathlib
import re
from typing import Any, Dict, List, Optional, Tuple

REGISTRY_FORMAT = 'kmax_tf.pretrained_registry.v1'
SHIPPED_REGISTRY = pathlib.Path(__file__).with_name('registry.json')
REGISTRY_ENV = 'KMAX_TF_REGISTRY'
# Configs are given relative to the repository root (the folder holding kmax_tf/).
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

KIND_KMAX = 'kmax'
KIND_IMAGENET = 'imagenet'
KINDS = (KIND_KMAX, KIND_IMAGENET)
# How `load_deeplab2_checkpoint` restores the file (see model/checkpoint_loading.py).
RESTORE_KINDS = ('full', 'backbone', 'pretrained_weights')
REFERENCE_PREFIX = 'pretrained:'

_NAME = re.compile(r'^[a-z0-9]+(_[a-z0-9]+)*$')
_SHA256 = re.compile(r'^[0-9a-f]{64}$')
_REQUIRED = ('name', 'kind', 'restore', 'url', 'config', 'checkpoint')


class PretrainedError(ValueError):
  """A registry, name, download or archive problem (the message says which)."""


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  """One released checkpoint.

  Attributes:
    name: short regular name, e.g. 'kmax_r50_coco'.
    kind: 'kmax' (a whole kMaX-DeepLab model) or 'imagenet' (a backbone).
    restore: the `load_deeplab2_checkpoint` kind: 'full', 'backbone' or
      'pretrained_weights'.
    url: the archive (.tar.gz): https://, http:// or gs://.
    config: the config it belongs to, relative to the repository root (or
      absolute, in user registries).
    checkpoint: the checkpoint prefix inside the archive (without '.index').
    dataset / backbone: for people, e.g. 'COCO', 'ConvNeXt-L'.
    metrics: DeepLab2's published numbers (pq, pq_thing, miou, ...).
    sha256 / size: of the archive, when recorded (None: not checked).
    configs: every config the checkpoint belongs to (ImageNet backbones).
    overrides: config overrides applied on top of `config`.
    extra: the entry's other fields, as in the JSON.
  """

  name: str
  kind: str
  restore: str
  url: str
  config: str
  checkpoint: str
  dataset: str = ''
  backbone: str = ''
  metrics: Dict[str, float] = dataclasses.field(default_factory=dict)
  sha256: Optional[str] = None
  size: Optional[int] = None
  configs: Tuple[str, ...] = ()
  overrides: Tuple[str, ...] = ()
  extra: Dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def archive_name(self) -> str:
    """The archive's file name (the last component of its URL)."""
    return self.url.rsplit('/', 1)[-1]

  @property
  def published_pq(self) -> Optional[float]:
    return self.metrics.get('pq')

  def config_path(self) -> pathlib.Path:
    """The config file (absolute)."""
    path = pathlib.Path(self.config)
    return path if path.is_absolute() else REPO_ROOT / path

  def to_json(self) -> Dict[str, Any]:
    record = dict(name=self.name, kind=self.kind, restore=self.restore, url=self.url,
                  config=self.config, checkpoint=self.checkpoint, dataset=self.dataset,
                  backbone=self.backbone, metrics=dict(self.metrics), sha256=self.sha256,
                  size=self.size)
    if self.configs:
      record['configs'] = list(self.configs)
    if self.overrides:
      record['overrides'] = list(self.overrides)
    record.update(self.extra)
    return record


def _entry(record: Any, source: str) -> ModelEntry:
  if not isinstance(record, dict):
    raise PretrainedError(f'{source}: every item of "models" must be an object, got {record!r}.')
  where = f'{source}: model {record.get("name", "?")!r}'
  missing = [key for key in _REQUIRED if not isinstance(record.get(key), str) or not record[key]]
  if missing:
    raise PretrainedError(f'{where} lacks the string field(s) {", ".join(missing)}.')
  if not _NAME.match(record['name']):
    raise PretrainedError(f'{where}: names are lowercase words joined by "_".')
  if record['kind'] not in KINDS:
    raise PretrainedError(f'{where}: kind must be one of {KINDS}, got {record["kind"]!r}.')
  if record['restore'] not in RESTORE_KINDS:
    raise PretrainedError(f'{where}: restore must be one of {RESTORE_KINDS}, got '
                          f'{record["restore"]!r}.')
  if not re.match(r'^(https?|gs)://[^/]+/.+\.tar\.gz$', record['url']):
    raise PretrainedError(f'{where}: url must be an http(s):// or gs:// .tar.gz URL, got '
                          f'{record["url"]!r}.')
  checkpoint = record['checkpoint']
  if (checkpoint.startswith('/') or '..' in checkpoint.split('/')
      or checkpoint.endswith(('.index', '/'))):
    raise PretrainedError(f'{where}: checkpoint must be a relative prefix inside the archive '
                          f'(without .index), got {checkpoint!r}.')
  sha256 = record.get('sha256')
  if sha256 is not None and not (isinstance(sha256, str) and _SHA256.match(sha256)):
    raise PretrainedError(f'{where}: sha256 must be null or 64 lowercase hex digits.')
  size = record.get('size')
  if size is not None and not (isinstance(size, int) and size > 0):
    raise PretrainedError(f'{where}: size must be null or a positive integer (bytes).')
  known = {f.name for f in dataclasses.fields(ModelEntry)} - {'extra'}
  return ModelEntry(
      name=record['name'], kind=record['kind'], restore=record['restore'], url=record['url'],
      config=record['config'], checkpoint=checkpoint, dataset=record.get('dataset', ''),
      backbone=record.get('backbone', ''), metrics=dict(record.get('metrics') or {}),
      sha256=sha256, size=size, configs=tuple(record.get('configs') or ()),
      overrides=tuple(record.get('overrides') or ()),
      extra={k: v for k, v in record.items() if k not in known})


def read_registry_file(path) -> List[ModelEntry]:
  """The entries of one registry JSON file, validated."""
  path = os.fspath(path)
  try:
    with open(path, encoding='utf-8') as f:
      data = json.load(f)
  except OSError as error:
    raise PretrainedError(f'Cannot read the model registry {path}: {error.strerror}.') from None
  except ValueError as error:
    raise PretrainedError(f'Model registry {path} is not valid JSON: {error}.') from None
  if not isinstance(data, dict) or data.get('format') != REGISTRY_FORMAT:
    raise PretrainedError(f'Model registry {path}: expected an object with "format": '
                          f'"{REGISTRY_FORMAT}".')
  if not isinstance(data.get('models'), list):
    raise PretrainedError(f'Model registry {path}: "models" must be a list.')
  entries = [_entry(record, path) for record in data['models']]
  names = [entry.name for entry in entries]
  duplicates = sorted({name for name in names if names.count(name) > 1})
  if duplicates:
    raise PretrainedError(f'Model registry {path} lists {", ".join(duplicates)} twice.')
  return entries


def registry_files() -> List[str]:
  """The shipped registry, then the files named by KMAX_TF_REGISTRY."""
  extra = [p for p in os.environ.get(REGISTRY_ENV, '').split(os.pathsep) if p]
  return [str(SHIPPED_REGISTRY)] + extra


def list_models() -> List[ModelEntry]:
  """Every registered model, in registry order (user registries last)."""
  merged: Dict[str, ModelEntry] = {}
  for path in registry_files():
    for entry in read_registry_file(path):
      merged.pop(entry.name, None)
      merged[entry.name] = entry
  return list(merged.values())


def get_model(name: str) -> ModelEntry:
  """The entry called `name` ('pretrained:' prefix allowed)."""
  if name.startswith(REFERENCE_PREFIX):
    name = name[len(REFERENCE_PREFIX):]
  entries = {entry.name: entry for entry in list_models()}
  if name not in entries:
    close = [known for known in entries if name and (name in known or known in name)]
    hint = f' Did you mean {", ".join(close[:5])}?' if close else ''
    raise PretrainedError(f'Unknown pretrained model {name!r}.{hint} '
                          '`python -m kmax_tf.pretrained list` shows them all.')
  return entries[name]
