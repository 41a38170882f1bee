"""Experiment configs: DeepLab2-schema textprotos, loaded and validated."""

from kmax_tf.config.loader import ConfigError
from kmax_tf.config.loader import ExperimentOptions
from kmax_tf.config.loader import load_config

__all__ = ['ConfigError', 'ExperimentOptions', 'load_config']
