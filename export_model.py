r"""Exports a kMaX-DeepLab checkpoint as a TF Serving SavedModel.

  python export_model.py --experiment_option_path=CONFIG \
      --checkpoint_path=CKPT --output_path=DIR [--config_override=...]

DIR is a TF Serving model base path (the next numbered version folder is
created in it) or, if its last component is a number, the version folder
itself. See kmax_tf/export/serving.py for the signatures and conventions.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

flags.DEFINE_string('experiment_option_path', None, 'ExperimentOptions textproto.')
flags.DEFINE_string('checkpoint_path', None, 'Checkpoint prefix or directory (latest) to export.')
flags.DEFINE_string('output_path', None, 'TF Serving base path or numbered version directory.')
flags.DEFINE_bool('merge_with_tf_op', False, "DeepLab2's custom merge op; not needed by kMaX "
                  '(only False is accepted).')
flags.DEFINE_multi_string('config_override', [], 'Config overrides applied after parsing, e.g. '
                          'eval_dataset_options.crop_size=1281,1281.')
flags.DEFINE_multi_string('substitution', [], 'KEY=VALUE for ${KEY} placeholders in the config.')
FLAGS = flags.FLAGS


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # TF's INFO lines drown the output.
  missing = [name for name in ('experiment_option_path', 'checkpoint_path', 'output_path')
             if not FLAGS[name].value]
  if missing:
    print(f'Error: missing --{", --".join(missing)}.', file=sys.stderr)
    return 2
  if FLAGS.merge_with_tf_op:
    print('Error: --merge_with_tf_op is not supported: kMaX-DeepLab merges in plain TensorFlow.',
          file=sys.stderr)
    return 2
  from kmax_tf.config import loader
  from kmax_tf.export import serving
  try:
    config = serving.load_experiment_config(
        FLAGS.experiment_option_path, overrides=FLAGS.config_override,
        substitutions=loader.parse_key_value_pairs(FLAGS.substitution))
    version_dir, _ = serving.export_saved_model(config, FLAGS.checkpoint_path, FLAGS.output_path)
  except (ValueError, OSError) as error:
    from kmax_tf import cli_errors
    if not cli_errors.is_user_error(error):
      raise  # A failure inside TensorFlow or a library: keep its traceback.
    print(f'Error: {cli_errors.one_line(error)}', file=sys.stderr)
    return 2
  print(f'Exported SavedModel to {version_dir}')
  return 0


if __name__ == '__main__':
  app.run(lambda argv: sys.exit(main(argv)))
