"""Shared pytest fixtures and set-up for the kmax_tf test-suite."""

import os
import pathlib
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# DeepLab2 reference data lives beside the checkout (../shared/dl2_reference).
DL2_REFERENCE = pathlib.Path(
    os.environ.get('KMAX_DL2_REFERENCE', REPO_ROOT.parent / 'shared' / 'dl2_reference'))


@pytest.fixture(scope='session')
def dl2_reference() -> pathlib.Path:
  if not DL2_REFERENCE.is_dir():
    pytest.fail(f'DeepLab2 reference data not found at {DL2_REFERENCE}; set KMAX_DL2_REFERENCE.')
  return DL2_REFERENCE


@pytest.fixture(scope='session')
def repo_root() -> pathlib.Path:
  return REPO_ROOT


# The released-config end-to-end runs (tests/training/test_released_configs.py) are long and
# mostly single-threaded: they run last, and start in the background at the session's start.
_RELEASED_CONFIGS_MODULE = 'tests.training.test_released_configs'


def pytest_collection_modifyitems(items):
  items.sort(key=lambda item: getattr(item.module, '__name__', '') == _RELEASED_CONFIGS_MODULE)


@pytest.fixture(scope='session', autouse=True)
def _released_config_runs(request, tmp_path_factory):
  module = sys.modules.get(_RELEASED_CONFIGS_MODULE)
  configs = module.selected_configs(request.session.items) if module else []
  if not configs:
    yield
    return
  runs = module.start_background_runs(configs, tmp_path_factory,
                                      request.getfixturevalue('dl2_reference'))
  yield
  runs.stop()
