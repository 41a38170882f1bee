r"""Converts ADE20K panoptic to DeepLab2-format TFRecords.

Expected layout (ADEChallengeData2016 after Mask2Former's `prepare_ade20k_pan_seg.py`, the one
DeepLab2 uses):
  <ade20k_root>/images/{training,validation}/*.jpg
  <ade20k_root>/ade20k_panoptic_{train,val}.json
  <ade20k_root>/ade20k_panoptic_{train,val}/*.png

The JSON's category ids 0..149 become DeepLab2's classes 1..150 and 255 becomes void (0); labels
are `class * 1000 + instance`. Like DeepLab2, segment areas are not checked against the PNG.
Greyscale JPEGs are re-encoded as RGB.

Usage:
  python -m kmax_tf.data.build_ade20k_data --ade20k_root=ADE --output_dir=OUT \
      [--splits=train,val --label_format=raw|panoptic_png --num_workers=8 --num_shards=N]
"""

import argparse
import functools
import glob
import os
import sys
from typing import Optional, Sequence

import tensorflow as tf

from kmax_tf.data import converter_utils
from kmax_tf.data import dataset_descriptors

_SPLITS = ('train', 'val')
_IMAGE_FOLDERS = {'train': 'training', 'val': 'validation'}


def ade20k_label_spec(treat_crowd_as_ignore: bool = True) -> converter_utils.PanopticLabelSpec:
  return converter_utils.label_spec_from_descriptor(
      dataset_descriptors.get_dataset_descriptor('ade20k_panoptic'), treat_crowd_as_ignore,
      check_area=False)


def convert_split(ade20k_root: str, split: str, output_dir: str, label_format: str = 'raw',
                  treat_crowd_as_ignore: bool = True, skip_missing: bool = False,
                  **write_kwargs) -> converter_utils.SplitSummary:
  """Converts one ADE20K split; `write_kwargs` go to `converter_utils.write_split`."""
  image_dir = os.path.join(ade20k_root, 'images', _IMAGE_FOLDERS[split])
  if not tf.io.gfile.isdir(image_dir):
    raise converter_utils.ConversionError(f'ADE20K image folder not found: {image_dir}')
  image_paths = sorted(tf.io.gfile.glob(os.path.join(glob.escape(image_dir), '*.jpg')))
  images = [(path, os.path.splitext(os.path.basename(path))[0]) for path in image_paths]
  json_path = os.path.join(ade20k_root, f'ade20k_panoptic_{split}.json')
  annotations = converter_utils.annotations_by_key(
      converter_utils.load_panoptic_json(json_path), json_path)
  panoptic_dir = os.path.join(ade20k_root, f'ade20k_panoptic_{split}')
  jobs, skipped = converter_utils.pair_images_with_annotations(images, annotations, panoptic_dir,
                                                               skip_missing)
  make_example = functools.partial(
      converter_utils.example_from_job, spec=ade20k_label_spec(treat_crowd_as_ignore),
      label_format=label_format, image_format='jpeg')
  return converter_utils.write_split(split, jobs, make_example, output_dir, skipped=skipped,
                                     **write_kwargs)


def main(argv: Optional[Sequence[str]] = None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--ade20k_root', required=True, help='ADE20K dataset root folder.')
  converter_utils.add_common_flags(parser, _SPLITS)
  args = parser.parse_args(argv)
  splits = converter_utils.parse_splits(args.splits, _SPLITS)
  if not tf.io.gfile.isdir(args.ade20k_root):
    raise converter_utils.ConversionError(f'--ade20k_root is not a folder: {args.ade20k_root}')
  with converter_utils.OutputRun(args.output_dir, splits, args.overwrite) as run:
    summaries = [
        convert_split(args.ade20k_root, split, args.output_dir, args.label_format,
                      args.treat_crowd_as_ignore, skip_missing=args.skip_missing,
                      num_shards=args.num_shards, num_workers=args.num_workers,
                      target_shard_mb=args.target_shard_mb, skip_corrupt=args.skip_corrupt,
                      progress=args.progress, run=run)
        for split in splits]
    run.commit()
  converter_utils.print_summary(summaries, args.output_dir)
  return summaries


if __name__ == '__main__':
  sys.exit(converter_utils.run_cli(main))
