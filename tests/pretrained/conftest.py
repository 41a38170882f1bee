"""Fixtures of the pretrained-model tests: archives in DeepLab2's layout, a loopback server.

One tiny kMaX model (tests/export/tiny_config.py) is built once per session;
its checkpoint keys get the reference weight rule's values and are written
with DeepLab2's training-state entries through the DeepLab2-format writer
(tests/helpers/dl2_checkpoint.py), then packed like DeepLab2's release
tarballs: `<archive stem>/ckpt-150000.{index,data-...}`. Unsafe archives
(path traversal, absolute paths, links out) are built next to it. Nothing
reaches the internet: the tests download from an HTTP server on 127.0.0.1.
"""

import dataclasses
import hashlib
import io
import json
import pathlib
import tarfile
from typing import Dict

import numpy as np
import pytest

from tests.export import tiny_config
from tests.helpers import dl2_checkpoint
from tests.pretrained import loopback

TINY = 'kmax_tiny_demo'
TINY_STEM = 'kmax_tiny_demo_train'
TINY_CHECKPOINT = f'{TINY_STEM}/ckpt-150000'
SALT = 'pretrained-tests'
TRAINING_STATE = {'global_step': np.array(150000, np.int64),
                  'optimizer/iter': np.array(150000, np.int64),
                  'backbone_optimizer/iter': np.array(150000, np.int64)}
CLASS_DEPENDENT = ('transformer_class_head/', 'semantic_last_layer/')
# The export tests' tiny config with a slim backbone and heads: an 8 MB archive.
OVERRIDES = tiny_config.OVERRIDES + (
    'model_options.backbone.backbone_width_multiplier=0.0625',
    'model_options.backbone.stem_width_multiplier=0.125',
    'model_options.backbone.backbone_layer_multiplier=0.34',
    'model_options.decoder.aspp_channels=16',
    'model_options.decoder.decoder_channels=16',
    'model_options.max_deeplab.pixel_space_head.head_channels=16',
    'model_options.max_deeplab.pixel_space_head.output_channels=16',
    'model_options.max_deeplab.auxiliary_semantic_head.head_channels=16',
)


def tiny_pretrained_config():
  from kmax_tf.export import serving
  return serving.load_experiment_config(tiny_config.BASE_CONFIG, overrides=OVERRIDES)


@dataclasses.dataclass
class Archives:
  folder: pathlib.Path                 # Served by the loopback server.
  values: Dict[str, np.ndarray]        # Model weights in the tiny archive.
  original_prefix: str                 # The checkpoint before packing.
  sha256: Dict[str, str]               # archive file name -> digest
  size: Dict[str, int]


def _sha256(path) -> str:
  return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def _pack(archive: pathlib.Path, prefix: str, inner_prefix: str) -> None:
  """Packs a checkpoint prefix's files as `inner_prefix.*` (plus its folder entry)."""
  prefix = pathlib.Path(prefix)
  with tarfile.open(archive, 'w:gz') as tar:
    tar.add(prefix.parent, arcname=inner_prefix.split('/')[0], recursive=False)
    for path in sorted(prefix.parent.glob(prefix.name + '.*')):
      tar.add(path, arcname=inner_prefix + path.name[len(prefix.name):])


def _add_bytes(tar, name: str, data: bytes = b'escaped\n') -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _add_link(tar, name: str, target: str, link_type) -> None:
  info = tarfile.TarInfo(name)
  info.type, info.linkname = link_type, target
  tar.addfile(info)


def _evil_archives(folder: pathlib.Path, index_bytes: bytes, outside: pathlib.Path) -> None:
  """Archives with one unsafe member each (besides a harmless checkpoint index)."""
  unsafe = {
      'evil_dotdot': lambda tar: _add_bytes(tar, 'evil_dotdot/../../escaped_dotdot.txt'),
      'evil_absolute': lambda tar: _add_bytes(tar, str(outside / 'escaped_absolute.txt')),
      'evil_symlink': lambda tar: (
          _add_link(tar, 'evil_symlink/link', '../../..', tarfile.SYMTYPE),
          _add_bytes(tar, 'evil_symlink/link/escaped_symlink.txt')),
      'evil_hardlink': lambda tar: _add_link(
          tar, 'evil_hardlink/hard', '../outside/secret.txt', tarfile.LNKTYPE),
  }
  for stem, add in unsafe.items():
    with tarfile.open(folder / f'{stem}.tar.gz', 'w:gz') as tar:
      _add_bytes(tar, f'{stem}/ckpt-1.index', index_bytes)
      add(tar)


@pytest.fixture(scope='session')
def archives(tmp_path_factory) -> Archives:
  import tensorflow as tf

  from kmax_tf.export import serving
  from kmax_tf.model import checkpoint_loading

  root = tmp_path_factory.mktemp('pretrained_archives')
  module = serving.build_serving_module(tiny_pretrained_config(), None)
  variables = checkpoint_loading.object_graph_variables(
      tf.train.Checkpoint(**module.model.checkpoint_items))
  values = {key: dl2_checkpoint.rule_value(key, tuple(v.shape.as_list()), SALT).astype(np.float32)
            for key, v in variables.items()}
  original = dl2_checkpoint.write_checkpoint({**values, **TRAINING_STATE},
                                             root / 'written' / TINY_STEM / 'ckpt-150000')
  folder = root / 'served'
  (folder / 'mirror').mkdir(parents=True)
  _pack(folder / f'{TINY_STEM}.tar.gz', original, TINY_CHECKPOINT)
  # The same model packed under another checkpoint name than the registry's.
  _pack(folder / 'kmax_tiny_relaid_train.tar.gz', original, 'weights/model')
  (folder / 'mirror' / f'{TINY_STEM}.tar.gz').write_bytes(
      (folder / f'{TINY_STEM}.tar.gz').read_bytes())
  # Another number of classes: the class-dependent layers have 2 more outputs.
  nine = {key: (np.ones(value.shape[:-1] + (value.shape[-1] + 2,), np.float32)
                if key.startswith(CLASS_DEPENDENT) else value) for key, value in values.items()}
  nine_prefix = dl2_checkpoint.write_checkpoint({**nine, **TRAINING_STATE},
                                                root / 'nine' / 'ckpt-150000')
  _pack(folder / 'kmax_tiny_nine_train.tar.gz', nine_prefix, 'kmax_tiny_nine_train/ckpt-150000')
  outside = root / 'outside'
  outside.mkdir()
  (outside / 'secret.txt').write_text('secret\n')
  _evil_archives(folder, pathlib.Path(original + '.index').read_bytes(), outside)
  files = sorted(folder.glob('*.tar.gz'))
  return Archives(folder=folder, values=values, original_prefix=original,
                  sha256={f.name: _sha256(f) for f in files},
                  size={f.name: f.stat().st_size for f in files})


@pytest.fixture(scope='session')
def server(archives):
  with loopback.LoopbackServer(archives.folder) as running:
    yield running


def registry_records(archives: Archives, url: str) -> list:
  """The test registry: the tiny model under several names, and the unsafe archives."""
  config = str(tiny_config.BASE_CONFIG)

  def record(name, stem, checkpoint, sha256=True, size=True, **extra):
    file_name = f'{stem}.tar.gz'
    return dict(name=name, kind='kmax', restore='full', dataset='kmax_demo_panoptic',
                backbone='ResNet-50 (tiny)', url=f'{url}/{file_name}', config=config,
                overrides=list(OVERRIDES), checkpoint=checkpoint,
                metrics={'pq': 1.0},
                sha256=archives.sha256[file_name] if sha256 is True else sha256,
                size=archives.size[file_name] if size else None, **extra)

  records = [
      record(TINY, TINY_STEM, TINY_CHECKPOINT),
      record('kmax_tiny_unchecked', TINY_STEM, TINY_CHECKPOINT, sha256=None, size=False),
      record('kmax_tiny_badsum', TINY_STEM, TINY_CHECKPOINT, sha256='0' * 64),
      record('kmax_tiny_badsize', TINY_STEM, TINY_CHECKPOINT, sha256=None, size=False),
      record('kmax_tiny_relaid', 'kmax_tiny_relaid_train', 'kmax_tiny_relaid_train/ckpt-7'),
      record('kmax_tiny_nine', 'kmax_tiny_nine_train', 'kmax_tiny_nine_train/ckpt-150000'),
  ]
  records[3]['size'] = archives.size[f'{TINY_STEM}.tar.gz'] + 1
  for stem in ('evil_dotdot', 'evil_absolute', 'evil_symlink', 'evil_hardlink'):
    records.append(record(stem, stem, f'{stem}/ckpt-1'))
  return records


@pytest.fixture
def cache(tmp_path, monkeypatch, archives, server):
  """A fresh cache and a test registry pointing at the loopback server."""
  server.reset()
  registry = tmp_path / 'registry.json'
  registry.write_text(json.dumps({'format': 'kmax_tf.pretrained_registry.v1',
                                  'models': registry_records(archives, server.url)}))
  home = tmp_path / 'cache'
  monkeypatch.setenv('KMAX_TF_HOME', str(home))
  monkeypatch.setenv('KMAX_TF_REGISTRY', str(registry))
  for name in ('KMAX_TF_OFFLINE', 'KMAX_TF_MIRROR'):
    monkeypatch.delenv(name, raising=False)
  yield home
  server.reset()


def cache_files(home: pathlib.Path) -> list:
  """The files and model folders in the cache, relative (lock files excepted)."""
  if not home.exists():
    return []
  return sorted(str(p.relative_to(home)) for p in home.rglob('*')
                if (p.is_file() and not p.name.endswith('.lock')) or p.parent.name == 'models')
