r"""Converts Cityscapes panoptic to DeepLab2-format TFRecords.

Expected layout (Cityscapes plus `cityscapesscripts/preparation/createPanopticImgs.py
--use-train-id`):
  <cityscapes_root>/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  <cityscapes_root>/gtFine/cityscapes_panoptic_{train,val}_trainId.json
  <cityscapes_root>/gtFine/cityscapes_panoptic_{train,val}_trainId/*.png

Segments carry train ids (0..18) as `category_id`; labels are `train_id * 1000 + instance` with
255 (ignore) for unlabeled and, by default, crowd pixels. Images are matched to annotations by
`image_id` (`<city>_<seq>_<frame>`), which is also the stored file name. PNG bytes are stored
unchanged. The test split has no labels.

Usage:
  python -m kmax_tf.data.build_cityscapes_data --cityscapes_root=CS --output_dir=OUT \
      [--splits=train,val,test --label_format=raw|panoptic_png --num_workers=8 --num_shards=N]
"""

import argparse
import functools
import glob
import os
import sys
from typing import List, Optional, Sequence, Tuple

import tensorflow as tf

from kmax_tf.data import converter_utils
from kmax_tf.data import dataset_descriptors

_SPLITS = ('train', 'val', 'test')
_LABELED_SPLITS = ('train', 'val')
_IMAGE_SUFFIX = '_leftImg8bit.png'


def cityscapes_label_spec(treat_crowd_as_ignore: bool = True) -> converter_utils.PanopticLabelSpec:
  """Train ids are already contiguous: identity mapping, things 11..18, divisor 1000."""
  descriptor = dataset_descriptors.get_dataset_descriptor('cityscapes_panoptic')
  return converter_utils.PanopticLabelSpec(
      category_to_class={i: i for i in range(descriptor.num_classes)},
      thing_class_ids=frozenset(descriptor.class_has_instances_list),
      label_divisor=descriptor.panoptic_label_divisor, ignore_label=descriptor.ignore_label,
      treat_crowd_as_ignore=treat_crowd_as_ignore)


def list_images(cityscapes_root: str, split: str) -> List[Tuple[str, str]]:
  """Sorted (image path, image id) of a split, over all cities."""
  pattern = os.path.join(glob.escape(cityscapes_root), 'leftImg8bit', split, '*',
                         f'*{_IMAGE_SUFFIX}')
  return [(path, os.path.basename(path)[:-len(_IMAGE_SUFFIX)])
          for path in sorted(tf.io.gfile.glob(pattern))]


def convert_split(cityscapes_root: str, split: str, output_dir: str, label_format: str = 'raw',
                  treat_crowd_as_ignore: bool = True, skip_missing: bool = False,
                  **write_kwargs) -> converter_utils.SplitSummary:
  """Converts one Cityscapes split; `write_kwargs` go to `converter_utils.write_split`."""
  image_dir = os.path.join(cityscapes_root, 'leftImg8bit', split)
  if not tf.io.gfile.isdir(image_dir):
    raise converter_utils.ConversionError(f'Cityscapes image folder not found: {image_dir}')
  images = list_images(cityscapes_root, split)
  if not images:
    raise converter_utils.ConversionError(f'no *{_IMAGE_SUFFIX} images under {image_dir}/<city>/')
  annotations, panoptic_dir = None, ''
  if split in _LABELED_SPLITS:
    json_path = os.path.join(cityscapes_root, 'gtFine', f'cityscapes_panoptic_{split}_trainId.json')
    annotations = converter_utils.annotations_by_key(
        converter_utils.load_panoptic_json(json_path), json_path, key='image_id')
    panoptic_dir = os.path.join(cityscapes_root, 'gtFine', f'cityscapes_panoptic_{split}_trainId')
  jobs, skipped = converter_utils.pair_images_with_annotations(images, annotations, panoptic_dir,
                                                               skip_missing)
  make_example = functools.partial(
      converter_utils.example_from_job, spec=cityscapes_label_spec(treat_crowd_as_ignore),
      label_format=label_format, image_format='png')
  summary = converter_utils.write_split(split, jobs, make_example, output_dir, skipped=skipped,
                                        **write_kwargs)
  expected = dataset_descriptors.get_dataset_descriptor(
      'cityscapes_panoptic').splits_to_sizes.get(f'{split}_fine')
  if expected is not None and expected != summary.num_examples:
    # DeepLab2 refuses this; a subset is fine here but worth saying.
    summary.notes.append(f'the full Cityscapes {split} split has {expected} images')
  return summary


def main(argv: Optional[Sequence[str]] = None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--cityscapes_root', required=True, help='Cityscapes dataset root folder.')
  converter_utils.add_common_flags(parser, _SPLITS)
  args = parser.parse_args(argv)
  splits = converter_utils.parse_splits(args.splits, _SPLITS)
  given_argv = sys.argv[1:] if argv is None else argv
  splits_given = any(a.startswith('--splits') for a in given_argv)
  if not tf.io.gfile.isdir(args.cityscapes_root):
    raise converter_utils.ConversionError(
        f'--cityscapes_root is not a folder: {args.cityscapes_root}')
  test_dir = os.path.join(args.cityscapes_root, 'leftImg8bit', 'test')
  if 'test' in splits and not tf.io.gfile.isdir(test_dir) and not splits_given:
    sys.stderr.write(f'note: {test_dir} not found; the test split is not converted\n')
    splits.remove('test')
  summaries = []
  with converter_utils.OutputRun(args.output_dir, splits, args.overwrite) as run:
    for split in splits:
      summaries.append(convert_split(
          args.cityscapes_root, split, args.output_dir, args.label_format,
          args.treat_crowd_as_ignore, skip_missing=args.skip_missing,
          num_shards=args.num_shards, num_workers=args.num_workers,
          target_shard_mb=args.target_shard_mb, skip_corrupt=args.skip_corrupt,
          progress=args.progress, run=run))
    run.commit()
  converter_utils.print_summary(summaries, args.output_dir)
  return summaries


if __name__ == '__main__':
  sys.exit(converter_utils.run_cli(main))
