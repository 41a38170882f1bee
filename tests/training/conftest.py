"""Fixtures shared by the training tests."""

# The tiny demo dataset and config of the end-to-end test (module scope: one per test module).
from tests.training.test_end_to_end import tiny_setup  # noqa: F401
