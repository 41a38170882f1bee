"""Trains and/or evaluates a kMaX-DeepLab experiment (DeepLab2's trainer/train.py flags).

Example:
  python trainer/train.py --config_file=configs/demo/kmax_demo.textproto \
      --mode=train_and_eval --model_dir=/tmp/kmax_demo

Files go to <model_dir>/<experiment_name>/ as in DeepLab2. Restarting the same
command resumes from the newest checkpoint there.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

# TensorFlow-free imports (fast flags and config errors); kmax_tf sets TF_USE_LEGACY_KERAS.
from kmax_tf.config import loader
from kmax_tf.config import validation
from kmax_tf.training import distribution

flags.DEFINE_enum('mode', None, list(validation.MODES), 'What to run.')
flags.DEFINE_string('model_dir', None, 'Base directory for checkpoints and summaries; the '
                    "config's experiment_name is appended.")
flags.DEFINE_string('config_file', None, 'ExperimentOptions textproto (DeepLab2 schema).')
flags.DEFINE_string('master', None, 'Cloud TPU name or grpc:// address (implies a TPU).')
flags.DEFINE_integer('num_gpus', 0, 'Number of local GPUs (0: CPU).')
flags.DEFINE_enum('strategy', '', list(distribution.SUPPORTED_STRATEGIES),
                  "Distribution strategy; '' chooses as DeepLab2 from --master/--num_gpus. "
                  'multi_worker_mirrored reads the cluster from TF_CONFIG.')
flags.DEFINE_multi_string('config_override', [], 'Applied after parsing, in order, e.g. '
                          'trainer_options.solver_options.base_learning_rate=0.001.')
flags.DEFINE_multi_string('substitution', [], 'KEY=VALUE for ${KEY} placeholders in the config.')
flags.DEFINE_enum('checkpoint_input_iterator', 'false', ['false', 'true', 'if_possible'],
                  'Also checkpoint the training input position, for an exact resume. false (as '
                  'DeepLab2): a resumed run reads a fresh input stream. true: stop at start-up if '
                  'the pipeline cannot be saved; if_possible: then train without it. The state '
                  'holds the shuffle and prefetch buffers (large at big batches and crops).')
flags.DEFINE_bool('eval_initial_model', False, 'Allow --mode=eval/continuous_eval on a '
                  'model_dir without checkpoint (evaluates the initial model).')
flags.DEFINE_integer('num_cpu_devices', 0, 'Split the CPU into this many logical devices '
                     '(testing MirroredStrategy without accelerators).')
flags.mark_flags_as_required(['mode', 'model_dir', 'config_file'])

FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    # The checks that need no TensorFlow first, so their errors come in a second.
    config = loader.load_config(FLAGS.config_file,
                                loader.parse_key_value_pairs(FLAGS.substitution),
                                FLAGS.config_override, check_choices=False)
    validation.validate_for_mode(config, FLAGS.mode, source=FLAGS.config_file)
  except (ValueError, OSError) as error:
    sys.exit(f'Error in the config: {error}')
  import tensorflow as tf
  if FLAGS.num_cpu_devices > 1:
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * FLAGS.num_cpu_devices)
  try:
    # Backbone, optimizer, ... names: listed by their builders (TensorFlow modules).
    validation.check_choices(config, source=FLAGS.config_file)
  except ValueError as error:
    sys.exit(f'Error in the config: {error}')
  from kmax_tf import cli_errors
  from kmax_tf.data import record_check
  from kmax_tf.training import train_lib

  model_dir = os.path.join(FLAGS.model_dir, config.experiment_name)
  try:
    record_check.check_input_files(config, FLAGS.mode)
  except record_check.DataError as error:
    sys.exit(f'Error in the data: {error}')
  logging.info('Running %s in %s', FLAGS.mode, model_dir)
  try:
    results = train_lib.run_experiment(
        FLAGS.mode, config, model_dir, strategy_name=FLAGS.strategy, master=FLAGS.master,
        num_gpus=FLAGS.num_gpus, checkpoint_input_iterator=FLAGS.checkpoint_input_iterator,
        eval_initial_model=FLAGS.eval_initial_model)
  except (ValueError, OSError, tf.errors.OpError) as error:
    # Known user errors (bad config, data, checkpoint): one line. Others keep the traceback.
    data_error = record_check.data_error_line(error)
    if data_error is not None:
      sys.exit(f'Error in the data: {data_error} Checkpoints written before stay intact in '
               f'{model_dir}.')
    if not cli_errors.is_user_error(error):
      raise
    sys.exit(f'Error: {cli_errors.one_line(error)}')
  if results:
    train_lib.print_results(results)


if __name__ == '__main__':
  app.run(main)
