"""The shipped registry against DeepLab2's model zoo pages (hand-copied here), the
command line, and the README table."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from kmax_tf import pretrained
from kmax_tf.config import loader
from tests.pretrained.conftest import TINY

REPO = pathlib.Path(__file__).resolve().parents[2]
BASE = 'https://storage.googleapis.com/gresearch/tf-deeplab/checkpoint/'

# name: (archive stem, config, published val PQ), from DeepLab2's g3doc/projects/kmax_deeplab.md.
KMAX = {
    'kmax_r50_coco': ('kmax_resnet50_coco_train', 'coco/kmax_meta_r50_os32', 53.0),
    'kmax_axial_r50_coco': ('kmax_maxs_gelu_coco_train', 'coco/kmax_meta_axial_r50_os32', 56.2),
    'kmax_convnext_tiny_coco': ('kmax_convnext_tiny_coco_train',
                                'coco/kmax_meta_convnext_tiny_os32', 55.3),
    'kmax_convnext_small_coco': ('kmax_convnext_small_coco_train',
                                 'coco/kmax_meta_convnext_small_os32', 56.3),
    'kmax_convnext_base_coco': ('kmax_convnext_base_coco_train',
                                'coco/kmax_meta_convnext_base_os32', 57.2),
    'kmax_convnext_large_coco': ('kmax_convnext_large_coco_train',
                                 'coco/kmax_meta_convnext_large_os32', 57.9),
    'kmax_convnext_large_coco_unlabeled': ('kmax_convnext_large_coco_train_unlabeled',
                                           'coco/kmax_meta_convnext_large_os32', 58.1),
    'kmax_r50_cityscapes': ('kmax_resnet50_cityscapes_train', 'cityscapes/kmax_meta_r50_os32',
                            64.3),
    'kmax_axial_r50_cityscapes': ('kmax_maxs_gelu_cityscapes_train',
                                  'cityscapes/kmax_meta_axial_r50_os32', 66.4),
    'kmax_convnext_tiny_cityscapes': ('kmax_convnext_tiny_cityscapes_train',
                                      'cityscapes/kmax_meta_convnext_tiny_os32', 66.3),
    'kmax_convnext_small_cityscapes': ('kmax_convnext_small_cityscapes_train',
                                       'cityscapes/kmax_meta_convnext_small_os32', 67.3),
    'kmax_convnext_base_cityscapes': ('kmax_convnext_base_cityscapes_train',
                                      'cityscapes/kmax_meta_convnext_base_os32', 68.0),
    'kmax_convnext_large_cityscapes': ('kmax_convnext_large_cityscapes_train',
                                       'cityscapes/kmax_meta_convnext_large_os32', 68.4),
    'kmax_r50_ade20k_641': ('kmax_resnet50_res641_ade20k_train', 'ade20k/kmax_meta_r50_os32',
                            41.5),
    'kmax_r50_ade20k_1281': ('kmax_resnet50_res1281_ade20k_train',
                             'ade20k/kmax_meta_r50_os32_res1281', 42.3),
    'kmax_convnext_large_ade20k_641': ('kmax_convnext_large_res641_ade20k_train',
                                       'ade20k/kmax_meta_convnext_large_os32', 48.7),
    'kmax_convnext_large_ade20k_1281': ('kmax_convnext_large_res1281_ade20k_train',
                                        'ade20k/kmax_meta_convnext_large_os32_res1281', 50.9),
}
# name: (archive stem, restore kind), from g3doc/projects/imagenet_pretrained_checkpoints.md.
IMAGENET = {
    'resnet50_imagenet1k': ('resnet50_imagenet1k', 'backbone'),
    'axial_r50_imagenet22k': ('maxs_gelu_imagenet_22k_1k_224', 'backbone'),
    'convnext_tiny_imagenet22k': ('convnext_tiny_imagenet_22k_1k_384', 'pretrained_weights'),
    'convnext_small_imagenet22k': ('convnext_small_imagenet_22k_1k_384', 'pretrained_weights'),
    'convnext_base_imagenet22k': ('convnext_base_imagenet_22k_1k_384', 'pretrained_weights'),
    'convnext_large_imagenet22k': ('convnext_large_imagenet_22k_1k_384', 'pretrained_weights'),
}


@pytest.fixture
def shipped(monkeypatch):
  monkeypatch.delenv('KMAX_TF_REGISTRY', raising=False)
  return {entry.name: entry for entry in pretrained.list_models()}


def test_every_released_kmax_checkpoint_is_registered(shipped):
  assert [n for n, e in shipped.items() if e.kind == 'kmax'] == list(KMAX)
  for name, (stem, config, pq) in KMAX.items():
    entry = shipped[name]
    assert entry.url == f'{BASE}{stem}.tar.gz', name
    assert entry.config == f'configs/{config}.textproto' and entry.config_path().is_file(), name
    assert (entry.restore, entry.published_pq) == ('full', pq), name
    # DeepLab2's release layout: <archive stem>/ckpt-<training steps of the config>.
    steps = loader.load_config(entry.config_path()).trainer_options.solver_options
    assert entry.checkpoint == f'{stem}/ckpt-{steps.training_number_of_steps}', name
    assert entry.sha256 is None and entry.size is None  # Not recorded yet (no network here).
  coco = shipped['kmax_convnext_large_coco'].metrics
  assert (coco['pq_thing'], coco['pq_stuff'], coco['test_pq']) == (64.0, 48.6, 58.0)
  assert shipped['kmax_r50_cityscapes'].metrics['miou'] == 79.7
  assert shipped['kmax_convnext_large_ade20k_1281'].extra['input_size'] == 1281


def test_the_imagenet_backbones_the_configs_start_from(shipped):
  assert [n for n, e in shipped.items() if e.kind == 'imagenet'] == list(IMAGENET)
  for name, (stem, restore) in IMAGENET.items():
    entry = shipped[name]
    assert (entry.url, entry.restore) == (f'{BASE}{stem}.tar.gz', restore), name
    assert all((REPO / config).is_file() for config in entry.configs) and entry.configs, name
  # Every kMaX config starts from one of them, through the field DeepLab2 reads.
  used = {config for name in IMAGENET for config in shipped[name].configs}
  assert used == {entry.config for entry in shipped.values() if entry.kind == 'kmax'}
  for name in IMAGENET:
    field = ('PRETRAINED_WEIGHTS' if shipped[name].restore == 'pretrained_weights'
             else 'INIT_CHECKPOINT')
    for config in shipped[name].configs:
      assert '${' + field + '}' in (REPO / config).read_text(), (name, config)


def test_the_readme_table_lists_every_released_checkpoint(shipped):
  readme = (REPO / 'README.md').read_text()
  section = readme[readme.index('## Pretrained models'):]
  section = section[:section.index('\n## ', 3)]
  rows = {row.split('|')[1].strip(' `'): row for row in section.splitlines()
          if row.startswith('| `')}
  assert list(rows) == list(KMAX)
  for name, (_, config, pq) in KMAX.items():
    cells = [cell.strip() for cell in rows[name].split('|')[1:-1]]
    assert cells[3] == f'{pq:.1f}' and cells[4].strip('`') == f'configs/{config}.textproto'


def _cli(*args, env=None):
  return subprocess.run([sys.executable, '-m', 'kmax_tf.pretrained', *args], cwd=REPO,
                        env=dict(env or os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                        text=True, timeout=120)


def test_command_line_list_download_path(cache, server, archives):
  listed = _cli('list', '--json')
  assert listed.returncode == 0, listed.stderr
  records = {record['name']: record for record in json.loads(listed.stdout)}
  assert set(KMAX) | set(IMAGENET) | {TINY} <= set(records)
  for record in records.values():
    assert {'name', 'url', 'config', 'checkpoint'} <= set(record)
    assert not record['checkpoint'].endswith('.index')
  assert records['kmax_r50_coco']['checkpoint'] == 'kmax_resnet50_coco_train/ckpt-150000'
  table = _cli('list')
  assert re.search(r'kmax_r50_coco +COCO +ResNet-50 +53\.0 +configs/coco/kmax_meta_r50_os32'
                   r'\.textproto +no', table.stdout), table.stdout

  assert _cli('path', TINY).returncode == 1
  downloaded = _cli('download', TINY)
  assert downloaded.returncode == 0, downloaded.stderr
  prefix = str(cache / 'models' / TINY / 'kmax_tiny_demo_train' / 'ckpt-150000')
  assert f'{TINY}: {prefix}' in downloaded.stdout
  assert f'sha256 {archives.sha256["kmax_tiny_demo_train.tar.gz"]}' in downloaded.stdout
  assert 'kmax_tiny_demo_train.tar.gz' in downloaded.stderr  # The progress bar's label.
  located = _cli('path', TINY)
  assert (located.returncode, located.stdout.strip()) == (0, prefix)
  assert re.search(rf'{TINY} .* yes', _cli('list').stdout)
  failed = _cli('download', 'kmax_tiny_badsum')
  assert failed.returncode == 2 and '\nError: Checksum mismatch for http' in failed.stderr
  attribute = subprocess.run(
      [sys.executable, '-c', 'import kmax_tf; print(len(kmax_tf.pretrained.list_models()))'],
      cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
      timeout=120)
  assert attribute.stdout.strip() == str(len(records)), attribute.stderr
  unknown = _cli('path', 'kmax_nope')
  assert unknown.returncode == 2 and "Unknown pretrained model 'kmax_nope'" in unknown.stderr
