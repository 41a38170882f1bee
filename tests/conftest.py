"""Shared pytest fixtures and set-up for the kmax_tf test-suite."""

import os
import pathlib

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
