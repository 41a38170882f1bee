r"""Runs panoptic segmentation on image files and writes results and pictures.

Usage:
  python -m kmax_tf.predict --model=exported/kmax \
      --images='photos/*.jpg' --output_dir=out
  python -m kmax_tf.predict --config_file=CONFIG --checkpoint_path=CKPT \
      --images=a.png,b.jpg --output_dir=out
  python -m kmax_tf.predict --pretrained=kmax_r50_coco --images=photos --output_dir=out

`--model` takes any export of export_model.py (SavedModel, .tflite or .onnx
file, version folder or base path) and runs it with its runtime (TensorFlow,
LiteRT, ONNX Runtime); `--saved_model` is the SavedModel-only spelling.
`--images` takes files, directories (their image files) and glob patterns,
comma-separated or repeated. Per image `<name>` it writes:
  out/panoptic/<name>.png    COCO panoptic PNG (id = R + 256 G + 256^2 B)
  out/segments/<name>.json   that image's COCO `segments_info` plus, per
                             segment, the category name, score and panoptic
                             label; and the COCO `categories`
  out/overlay/<name>.png     the photo with colored segments, boundaries and a
                             legend of the categories present
and at the end out/panoptic.json, the COCO panoptic JSON of all images.
Files that are not images, or fail, are reported and skipped; the exit code is
1 if any image failed, 2 if nothing could run at all. Existing outputs are not
replaced unless --overwrite.
"""

import glob
import json
import os
import sys
from typing import List, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging

flags.DEFINE_string('saved_model', None, 'SavedModel of export_model.py (version directory or '
                    'TF Serving base path).')
flags.DEFINE_string('model', None, 'Any export of export_model.py: SavedModel, LiteRT (.tflite) '
                    'or ONNX (.onnx), as a file, version directory or base path.')
flags.DEFINE_string('config_file', None, 'ExperimentOptions textproto (instead of --saved_model).')
flags.DEFINE_string('checkpoint_path', None, 'Checkpoint for --config_file.')
flags.DEFINE_string('pretrained', None, 'A released model by name (python -m kmax_tf.pretrained '
                    'list), downloaded and cached on first use; --config_file optionally '
                    'replaces its config.')
flags.DEFINE_multi_string('config_override', [], 'Overrides for --config_file, e.g. '
                          'evaluator_options.pixel_confidence_threshold=0.3.')
flags.DEFINE_multi_string('substitution', [], 'KEY=VALUE for ${KEY} in --config_file.')
flags.DEFINE_multi_string('images', [], 'Image files, directories or glob patterns '
                          '(comma-separated or repeated).')
flags.DEFINE_string('output_dir', None, 'Where results are written.')
flags.DEFINE_float('overlay_alpha', 0.55, 'Opacity of the segment colors in the overlay.')
flags.DEFINE_bool('overwrite', False, 'Replace existing output files.')

FLAGS = flags.FLAGS


def expand_image_paths(patterns: Sequence[str]) -> Tuple[List[str], List[str]]:
  """(sorted unique files, patterns that matched nothing) of files/dirs/globs."""
  import tensorflow as tf

  from kmax_tf import file_io
  from kmax_tf.export import image_io
  files, unmatched = [], []
  for pattern in patterns:
    for item in (part.strip() for part in pattern.split(',')):
      if not item:
        continue
      if tf.io.gfile.isdir(item):
        found = [os.path.join(item, name) for name in sorted(tf.io.gfile.listdir(item))
                 if name.lower().endswith(image_io.IMAGE_EXTENSIONS)]
      elif glob.has_magic(item):
        found = [path for path in sorted(tf.io.gfile.glob(item))
                 if not tf.io.gfile.isdir(path)]
      else:
        found = [item]  # A missing file is reported when it is read.
      if not found:
        unmatched.append(item)
      files.extend(found)
  unique = list(dict.fromkeys(path if file_io.is_remote(path) else os.path.normpath(path)
                              for path in files))
  return unique, unmatched




class ResultWriter:
  """Writes the per-image files and the combined COCO JSON (see module docstring)."""

  def __init__(self, output_dir: str, metadata: dict, overlay_alpha: float, overwrite: bool):
    from kmax_tf.evaluation import prediction_writers
    self._output_dir = output_dir
    self._metadata = metadata
    self._alpha = overlay_alpha
    self._overwrite = overwrite
    self._coco = prediction_writers.PanopticSubmissionWriter(
        output_dir, label_divisor=metadata['panoptic_label_divisor'],
        ignore_label=metadata['ignore_label'], thing_class_ids=metadata['thing_class_ids'],
        num_classes=metadata['num_classes'],
        dataset_category_ids=metadata['dataset_category_ids'],
        class_names=metadata['class_names'], png_folder_name='panoptic',
        json_file_name='panoptic.json', overwrite=overwrite)

  def add(self, image_path: str, prediction) -> dict:
    from kmax_tf import file_io
    from kmax_tf.export import visualization
    from kmax_tf.training import visualization as training_visualization
    stem = os.path.splitext(os.path.basename(image_path))[0]
    annotation = self._coco.add(os.path.basename(image_path), prediction.panoptic)
    # The writer lists segments by increasing panoptic label, void excluded,
    # as `prediction.segments` are.
    if len(annotation['segments_info']) != len(prediction.segments):
      raise ValueError(f'{image_path}: segment lists disagree.')
    for info, segment in zip(annotation['segments_info'], prediction.segments):
      info.update(category_name=segment.category_name, score=segment.score,
                  panoptic_label=segment.id)
    source = image_path if file_io.is_remote(image_path) else os.path.abspath(image_path)
    record = dict(annotation, source_image=source,
                  height=int(prediction.panoptic.shape[0]),
                  width=int(prediction.panoptic.shape[1]), categories=self._coco.categories())
    file_io.write_text_atomic(os.path.join(self._output_dir, 'segments', stem + '.json'),
                              json.dumps(record, indent=1), overwrite=self._overwrite)
    overlay = visualization.overlay_from_metadata(prediction.image, prediction.panoptic,
                                                  self._metadata, alpha=self._alpha)
    overlay_path = os.path.join(self._output_dir, 'overlay', stem + '.png')
    import tensorflow as tf  # tf.io.gfile: output_dir may be on gs:// or ram://.
    if not self._overwrite and tf.io.gfile.exists(overlay_path):
      raise FileExistsError(f'{overlay_path} already exists; refusing to overwrite it.')
    training_visualization.write_png_atomic(overlay_path, overlay)
    return record

  def finish(self) -> str:
    return self._coco.write_json()


def _make_predictor():
  from kmax_tf.config import loader
  from kmax_tf.export import predictor as predictor_lib
  if FLAGS.pretrained:
    if FLAGS.model or FLAGS.saved_model or FLAGS.checkpoint_path:
      raise ValueError('--pretrained names the weights: give no --model, --saved_model or '
                       '--checkpoint_path with it.')
    return predictor_lib.Predictor.from_pretrained(
        FLAGS.pretrained, overrides=FLAGS.config_override, config=FLAGS.config_file or None)
  given = [name for name in ('model', 'saved_model', 'config_file') if FLAGS[name].value]
  if len(given) > 1:
    raise ValueError(f'Give one of --model, --saved_model or --config_file (+ --checkpoint_path), '
                     f'not --{" and --".join(given)}.')
  if FLAGS.model:
    return predictor_lib.Predictor.from_export(FLAGS.model)
  if FLAGS.saved_model:
    return predictor_lib.Predictor.from_saved_model(FLAGS.saved_model)
  if not FLAGS.config_file:
    raise ValueError('Give --model (or --saved_model), --pretrained, or --config_file with '
                     '--checkpoint_path.')
  if not FLAGS.checkpoint_path:
    raise ValueError('--config_file needs --checkpoint_path.')
  from kmax_tf.export import serving
  config = serving.load_experiment_config(
      FLAGS.config_file, overrides=FLAGS.config_override,
      substitutions=loader.parse_key_value_pairs(FLAGS.substitution))
  return predictor_lib.Predictor.from_checkpoint(config, FLAGS.checkpoint_path)


def run(image_paths: Sequence[str], predictor, output_dir: str, overlay_alpha: float,
        overwrite: bool) -> Tuple[int, List[Tuple[str, str]]]:
  """Predicts and writes every image; returns (number written, [(path, error)])."""
  writer = ResultWriter(output_dir, predictor.metadata, overlay_alpha, overwrite)
  from kmax_tf import progress
  failures, written = [], 0
  bar = progress.ProgressBar(len(image_paths), 'predict', unit='image')
  for path in bar.iterate(image_paths):
    try:
      writer.add(path, predictor(path))
      written += 1
    except (ValueError, OSError) as error:
      from kmax_tf import cli_errors
      if not cli_errors.is_user_error(error):
        raise  # Not a bad image: a failure that must keep its traceback.
      message = str(error) if path in str(error) else f'{path}: {error}'
      if isinstance(error, FileExistsError):
        message += ' Pass --overwrite to replace the outputs.'
      failures.append((path, message))
      bar.write(f'Skipped {message}')
  if written:
    writer.finish()
  return written, failures


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # TF's INFO lines drown the output.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  if not FLAGS.output_dir:
    print('Error: --output_dir is required.', file=sys.stderr)
    return 2
  image_paths, unmatched = expand_image_paths(FLAGS.images)
  for pattern in unmatched:
    print(f'Warning: {pattern!r} matches no image files.', file=sys.stderr)
  if not image_paths:
    print(f'Error: no images to process (--images={",".join(FLAGS.images)!r} matches nothing).',
          file=sys.stderr)
    return 2
  try:
    predictor = _make_predictor()
    written, failures = run(image_paths, predictor, FLAGS.output_dir, FLAGS.overlay_alpha,
                            FLAGS.overwrite)
  except (ValueError, OSError) as error:
    from kmax_tf import cli_errors
    if not cli_errors.is_user_error(error):
      raise  # A failure inside TensorFlow or a library: keep its traceback.
    hint = ' Pass --overwrite to replace the outputs.' if isinstance(error, FileExistsError) else ''
    print(f'Error: {cli_errors.one_line(error)}{hint}', file=sys.stderr)
    return 2
  print(f'{written} of {len(image_paths)} images written to {FLAGS.output_dir}'
        + (f'; {len(failures)} failed:' if failures else '.'))
  for _, message in failures:
    print(f'  {message}')
  return 1 if failures else 0


def entry_point():
  app.run(lambda argv: sys.exit(main(argv)))


if __name__ == '__main__':
  entry_point()
