r"""Converts COCO panoptic to DeepLab2-format TFRecords.

Expected layout (the official COCO 2017 download):
  <coco_root>/train2017/*.jpg, val2017/*.jpg, test2017/*.jpg (test has no labels)
  <coco_root>/annotations/panoptic_{train,val}2017.json
  <coco_root>/annotations/panoptic_{train,val}2017/*.png

Category ids are remapped to DeepLab2's contiguous ids 1..133 (0 = void) and labels are
`class * 256 + instance`; crowd segments become void unless --treat_crowd_as_ignore=false. JPEG
bytes are stored unchanged, like DeepLab2.

Usage:
  python -m kmax_tf.data.build_coco_data --coco_root=COCO --output_dir=OUT \
      [--splits=train,val,test --label_format=raw|panoptic_png --num_workers=8 --num_shards=N]
"""

import argparse
import functools
import glob
import os
import sys
from typing import List, Optional, Sequence

import tensorflow as tf

from kmax_tf.data import converter_utils
from kmax_tf.data import dataset_descriptors

_SPLITS = ('train', 'val', 'test')
_LABELED_SPLITS = ('train', 'val')


def coco_label_spec(treat_crowd_as_ignore: bool = True) -> converter_utils.PanopticLabelSpec:
  """COCO category ids -> DeepLab2's contiguous ids 1..133, from the coco_panoptic descriptor."""
  return converter_utils.label_spec_from_descriptor(
      dataset_descriptors.get_dataset_descriptor('coco_panoptic'), treat_crowd_as_ignore)


def list_images(image_dir: str, extensions: Sequence[str] = ('jpg',)) -> List[str]:
  paths = []
  for extension in extensions:
    paths += tf.io.gfile.glob(os.path.join(glob.escape(image_dir), f'*.{extension}'))
  return sorted(paths)


def convert_split(coco_root: str, split: str, output_dir: str, label_format: str = 'raw',
                  treat_crowd_as_ignore: bool = True, **write_kwargs):
  """Converts one COCO split; `write_kwargs` go to `converter_utils.write_split`."""
  image_dir = os.path.join(coco_root, f'{split}2017')
  if not tf.io.gfile.isdir(image_dir):
    raise converter_utils.ConversionError(f'COCO image folder not found: {image_dir}')
  annotations = None
  panoptic_dir = ''
  if split in _LABELED_SPLITS:
    json_path = os.path.join(coco_root, 'annotations', f'panoptic_{split}2017.json')
    annotations = converter_utils.annotations_by_key(
        converter_utils.load_panoptic_json(json_path), json_path)
    panoptic_dir = os.path.join(coco_root, 'annotations', f'panoptic_{split}2017')
  skip_missing = write_kwargs.pop('skip_missing', False)
  images = [(path, os.path.splitext(os.path.basename(path))[0]) for path in list_images(image_dir)]
  jobs, skipped = converter_utils.pair_images_with_annotations(images, annotations, panoptic_dir,
                                                               skip_missing)
  make_example = functools.partial(
      converter_utils.example_from_job, spec=coco_label_spec(treat_crowd_as_ignore),
      label_format=label_format, image_format='jpeg')
  return converter_utils.write_split(split, jobs, make_example, output_dir, skipped=skipped,
                                     **write_kwargs)


def main(argv: Optional[Sequence[str]] = None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--coco_root', required=True, help='COCO dataset root folder.')
  converter_utils.add_common_flags(parser, _SPLITS)
  args = parser.parse_args(argv)
  splits = converter_utils.parse_splits(args.splits, _SPLITS)
  given_argv = sys.argv[1:] if argv is None else argv
  args.splits_given = any(a.startswith('--splits') for a in given_argv)
  if not tf.io.gfile.isdir(args.coco_root):
    raise converter_utils.ConversionError(f'--coco_root is not a folder: {args.coco_root}')
  test_dir = os.path.join(args.coco_root, 'test2017')
  if 'test' in splits and not tf.io.gfile.isdir(test_dir) and not args.splits_given:
    sys.stderr.write(f'note: {test_dir} not found; the test split is not converted\n')
    splits.remove('test')
  summaries = []
  with converter_utils.OutputRun(args.output_dir, splits, args.overwrite) as run:
    for split in splits:
      summaries.append(convert_split(
          args.coco_root, split, args.output_dir, args.label_format, args.treat_crowd_as_ignore,
          num_shards=args.num_shards, num_workers=args.num_workers,
          target_shard_mb=args.target_shard_mb, skip_missing=args.skip_missing,
          skip_corrupt=args.skip_corrupt, progress=args.progress, run=run))
    run.commit()
  converter_utils.print_summary(summaries, args.output_dir)
  return summaries


if __name__ == '__main__':
  sys.exit(converter_utils.run_cli(main))
