r"""Exports a kMaX-DeepLab checkpoint as a TF Serving SavedModel, LiteRT or ONNX model.

  python export_model.py --experiment_option_path=CONFIG \
      --checkpoint_path=CKPT --output_path=DIR [--config_override=...] \
      [--format=saved_model|tflite|onnx] [--quantization=none|float16|dynamic_int8]
  python export_model.py --pretrained=kmax_r50_coco --output_path=DIR [--format=...]

--pretrained names a released model (python -m kmax_tf.pretrained list): it is
downloaded and cached on first use and gives the checkpoint and the config
(--experiment_option_path, if given, replaces the config).

DIR is a TF Serving model base path (the next numbered version folder is
created in it) or, if its last component is a number, the version folder
itself. See kmax_tf/export/serving.py for the SavedModel's signatures and
conventions, kmax_tf/export/portable.py for the LiteRT (`<version>/model.tflite`)
and ONNX (`<version>/model.onnx`) files; --quantization is for tflite only.
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
flags.DEFINE_string('pretrained', None, 'A released model by name instead of '
                    '--checkpoint_path (and of --experiment_option_path, unless given).')
flags.DEFINE_bool('merge_with_tf_op', False, "DeepLab2's custom merge op; not needed by kMaX "
                  '(only False is accepted).')
flags.DEFINE_multi_string('config_override', [], 'Config overrides applied after parsing, e.g. '
                          'eval_dataset_options.crop_size=1281,1281.')
flags.DEFINE_multi_string('substitution', [], 'KEY=VALUE for ${KEY} placeholders in the config.')
flags.DEFINE_enum('format', 'saved_model', ['saved_model', 'tflite', 'onnx'],
                  'Export format: TF Serving SavedModel, LiteRT flatbuffer or ONNX.')
flags.DEFINE_enum('quantization', 'none', ['none', 'float16', 'dynamic_int8'],
                  'TFLite weights: float32, float16, or int8 with dynamic-range quantization.')
FLAGS = flags.FLAGS


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # TF's INFO lines drown the output.
  required = ('output_path',) if FLAGS.pretrained else (
      'experiment_option_path', 'checkpoint_path', 'output_path')
  missing = [name for name in required if not FLAGS[name].value]
  if missing:
    print(f'Error: missing --{", --".join(missing)}.', file=sys.stderr)
    return 2
  if FLAGS.pretrained and FLAGS.checkpoint_path:
    print('Error: give --pretrained or --checkpoint_path, not both.', file=sys.stderr)
    return 2
  if FLAGS.merge_with_tf_op:
    print('Error: --merge_with_tf_op is not supported: kMaX-DeepLab merges in plain TensorFlow.',
          file=sys.stderr)
    return 2
  from kmax_tf.config import loader
  from kmax_tf.export import portable
  from kmax_tf.export import serving
  try:
    substitutions = loader.parse_key_value_pairs(FLAGS.substitution)
    if FLAGS.pretrained:
      from kmax_tf import pretrained
      serving.resolve_version_dir(FLAGS.output_path)  # Fail before the download.
      config, checkpoint_path = pretrained.inference_inputs(
          FLAGS.pretrained, FLAGS.config_override, config=FLAGS.experiment_option_path or None,
          substitutions=substitutions)
    else:
      config = serving.load_experiment_config(
          FLAGS.experiment_option_path, overrides=FLAGS.config_override,
          substitutions=substitutions)
      checkpoint_path = FLAGS.checkpoint_path
    version_dir, _ = portable.export_model(config, checkpoint_path, FLAGS.output_path,
                                           export_format=FLAGS.format,
                                           quantization=FLAGS.quantization)
  except (ValueError, OSError) as error:
    from kmax_tf import cli_errors
    if not cli_errors.is_user_error(error):
      raise  # A failure inside TensorFlow or a library: keep its traceback.
    print(f'Error: {cli_errors.one_line(error)}', file=sys.stderr)
    return 2
  names = {'saved_model': 'SavedModel', 'tflite': 'LiteRT model', 'onnx': 'ONNX model'}
  written = (version_dir if FLAGS.format == 'saved_model' else
             os.path.join(version_dir, portable.MODEL_FILES[FLAGS.format]))
  print(f'Exported {names[FLAGS.format]} to {written}')
  return 0


if __name__ == '__main__':
  app.run(lambda argv: sys.exit(main(argv)))
