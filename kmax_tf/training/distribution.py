"""Creates the tf.distribute strategy: DeepLab2's choice plus an explicit --strategy.

TensorFlow is imported by the functions, so the trainer's flags can read
`SUPPORTED_STRATEGIES` without loading it.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
  import tensorflow as tf

ONE_DEVICE = 'one_device'
MIRRORED = 'mirrored'
MULTI_WORKER_MIRRORED = 'multi_worker_mirrored'
TPU = 'tpu'
SUPPORTED_STRATEGIES = ('', ONE_DEVICE, MIRRORED, MULTI_WORKER_MIRRORED, TPU)


def _tpu_strategy(master: Optional[str]) -> tf.distribute.Strategy:
  import tensorflow as tf  # (see the module docstring)
  resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=master or '')
  if master not in (None, '', 'local'):
    tf.config.experimental_connect_to_cluster(resolver)
  tf.tpu.experimental.initialize_tpu_system(resolver)
  return tf.distribute.TPUStrategy(resolver)


def _local_devices(num_gpus: int):
  import tensorflow as tf
  if num_gpus < 0:
    raise ValueError(f'--num_gpus must not be negative, got {num_gpus}.')
  if num_gpus == 0:
    return ['/device:CPU:0']
  available = len(tf.config.list_physical_devices('GPU'))
  if available < num_gpus:
    raise ValueError(f'--num_gpus={num_gpus} but TensorFlow sees {available} GPU(s).')
  return [f'/device:GPU:{i}' for i in range(num_gpus)]


def create_strategy(strategy: str = '', master: Optional[str] = None,
                    num_gpus: int = 0) -> tf.distribute.Strategy:
  """Returns the distribution strategy.

  Args:
    strategy: '' chooses as DeepLab2 (TPU if `master` is given, Mirrored for
      num_gpus > 1, else OneDevice on GPU:0 or CPU:0). 'one_device',
      'mirrored' (the `num_gpus` GPUs, or every logical CPU device when
      num_gpus == 0), 'multi_worker_mirrored' (cluster from the TF_CONFIG
      environment variable) or 'tpu' (address `master`).
    master: TPU name or grpc address.
    num_gpus: number of local GPUs.

  Raises:
    ValueError: for an unknown strategy or inconsistent flags.
  """
  if strategy not in SUPPORTED_STRATEGIES:
    raise ValueError(f'--strategy={strategy!r} is not supported; use one of '
                     f'{SUPPORTED_STRATEGIES[1:]}.')
  import tensorflow as tf
  if strategy == TPU or (not strategy and master is not None):
    return _tpu_strategy(master)
  if strategy == MULTI_WORKER_MIRRORED:
    if 'TF_CONFIG' not in os.environ:
      raise ValueError('--strategy=multi_worker_mirrored needs the TF_CONFIG environment '
                       'variable (cluster and task).')
    try:
      json.loads(os.environ['TF_CONFIG'])
    except json.JSONDecodeError as error:
      raise ValueError(f'TF_CONFIG is not valid JSON: {error}') from error
    return tf.distribute.MultiWorkerMirroredStrategy()
  devices = _local_devices(num_gpus)
  if strategy == MIRRORED:
    if num_gpus == 0:
      devices = [d.name for d in tf.config.list_logical_devices('CPU')]
    return tf.distribute.MirroredStrategy(devices)
  if strategy == ONE_DEVICE or len(devices) == 1:
    return tf.distribute.OneDeviceStrategy(devices[0])
  return tf.distribute.MirroredStrategy(devices)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True on the worker that writes checkpoints and summaries."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not resolver.cluster_spec().as_dict():
    return True
  task_type, task_id = resolver.task_type, resolver.task_id
  return task_type == 'chief' or (task_type == 'worker' and task_id == 0
                                  and 'chief' not in resolver.cluster_spec().as_dict())


def worker_id(strategy: tf.distribute.Strategy) -> str:
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not resolver.cluster_spec().as_dict():
    return 'chief'
  return f'{resolver.task_type}_{resolver.task_id}'
