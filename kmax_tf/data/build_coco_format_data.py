r"""Converts a user's own COCO-panoptic-format dataset and writes its dataset descriptor.

Input is one split in COCO panoptic format: a folder of images, the panoptic JSON (`images`,
`annotations` with `segments_info`, `categories` with `id`, `name`, `isthing` and optionally
`color`) and the folder of RGB id PNGs (id = R + 256 G + 65536 B).

Category ids, sorted, become contiguous classes 1..K with 0 = void (COCO's convention); thing
classes come from `isthing`. The split's TFRecords are written like the COCO converter's, and the
descriptor JSON (`DatasetDescriptor` fields, loadable with `dataset_descriptor_file`) is created,
or updated with this split's size when it already exists for the same categories. Run once per
split.

Usage:
  python -m kmax_tf.data.build_coco_format_data --dataset_name=my_data --split=train \
      --image_dir=DIR --panoptic_json=panoptic_train.json [--panoptic_dir=panoptic_train] \
      --output_dir=OUT [--descriptor_path=OUT/my_data.json --label_format=panoptic_png]
"""

import argparse
import functools
import json
import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from kmax_tf import file_io
from kmax_tf.data import converter_utils
from kmax_tf.data import dataset_descriptors

_IMAGE_FORMATS = {'.jpg': 'jpeg', '.jpeg': 'jpeg', '.png': 'png'}
# Fields that must agree when a descriptor is updated with another split.
_CLASS_FIELDS = ('num_classes', 'ignore_label', 'panoptic_label_divisor',
                 'class_has_instances_list', 'class_names', 'dataset_category_ids')


def _default_color(category_id: int) -> List[int]:
  rng = np.random.default_rng(category_id)
  return [int(v) for v in rng.integers(40, 256, size=3)]


def categories_to_descriptor(categories: Sequence[Mapping[str, Any]], name: str,
                             label_divisor: int, source: str, **kmax_options) -> Dict[str, Any]:
  """The descriptor dict (JSON-ready) for COCO `categories`; `kmax_options` set kMaX fields."""
  if not categories:
    raise converter_utils.ConversionError(f'{source}: no "categories" listed')
  for index, category in enumerate(categories):
    for field in ('id', 'name'):
      if field not in category:
        raise converter_utils.ConversionError(
            f'{source}: category #{index} has no {field!r} field')
  ordered = sorted(categories, key=lambda c: int(c['id']))
  ids = [int(c['id']) for c in ordered]
  if len(set(ids)) != len(ids):
    raise converter_utils.ConversionError(f'{source}: duplicate category ids')
  if ids[0] <= 0:
    raise converter_utils.ConversionError(
        f'{source}: category id {ids[0]} is not allowed; 0 means unlabeled in COCO panoptic')
  category_ids = [0] + ids
  descriptor = {
      'name': name,
      'num_classes': len(ordered) + 1,
      'ignore_label': 0,
      'panoptic_label_divisor': label_divisor,
      'class_has_instances_list': [i + 1 for i, c in enumerate(ordered) if c.get('isthing')],
      'class_names': ['void'] + [str(c['name']) for c in ordered],
      'colormap': [[0, 0, 0]] + [list(c.get('color') or _default_color(int(c['id'])))
                                 for c in ordered],
      'splits_to_sizes': {},
      'dataset_category_ids': (None if category_ids == list(range(len(category_ids)))
                               else category_ids),
  }
  descriptor.update(kmax_options)
  return descriptor


def merge_descriptor(path: str, new: Dict[str, Any], split: str, size: int) -> Dict[str, Any]:
  """Adds `split` to an existing descriptor file's sizes, or starts from `new`."""
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      existing = json.load(f)
    different = [k for k in _CLASS_FIELDS if existing.get(k) != new.get(k)]
    if different:
      raise converter_utils.ConversionError(
          f'descriptor {path} exists with different {different}; this split\'s categories do not '
          'match it (use another --descriptor_path)')
    merged = dict(existing)
  else:
    merged = dict(new)
  merged['splits_to_sizes'] = dict(merged.get('splits_to_sizes', {}), **{split: size})
  try:
    dataset_descriptors.descriptor_from_dict(merged, source=path)
  except ValueError as e:
    raise converter_utils.ConversionError(str(e)) from e
  return merged


def convert(image_dir: str, panoptic_json: str, panoptic_dir: Optional[str], split: str,
            output_dir: str, dataset_name: str, descriptor_path: Optional[str] = None,
            label_divisor: int = 256, label_format: str = 'raw',
            treat_crowd_as_ignore: bool = True, skip_missing: bool = False,
            kmax_options: Optional[Mapping[str, Any]] = None, **write_kwargs):
  """Converts one split; returns (SplitSummary, descriptor path)."""
  data = converter_utils.load_panoptic_json(panoptic_json)
  if not isinstance(data.get('images'), list):
    raise converter_utils.ConversionError(f'{panoptic_json} has no "images" list')
  if panoptic_dir is None:
    panoptic_dir = os.path.splitext(panoptic_json)[0]
  if not tf.io.gfile.isdir(image_dir):
    raise converter_utils.ConversionError(f'--image_dir is not a folder: {image_dir}')
  if not tf.io.gfile.isdir(panoptic_dir):
    raise converter_utils.ConversionError(f'panoptic PNG folder not found: {panoptic_dir}')
  descriptor = categories_to_descriptor(data.get('categories', []), dataset_name, label_divisor,
                                        panoptic_json, **dict(kmax_options or {}))
  category_ids = descriptor['dataset_category_ids'] or list(range(descriptor['num_classes']))
  spec = converter_utils.PanopticLabelSpec(
      category_to_class={c: i for i, c in enumerate(category_ids) if i > 0},
      thing_class_ids=frozenset(descriptor['class_has_instances_list']),
      label_divisor=label_divisor, ignore_label=0, treat_crowd_as_ignore=treat_crowd_as_ignore)

  annotations = converter_utils.annotations_by_key(data, panoptic_json, key='image_id')
  images, image_formats, missing_images = [], {}, []
  for index, info in enumerate(data['images']):
    if 'id' not in info or 'file_name' not in info:
      raise converter_utils.ConversionError(
          f'{panoptic_json}: image #{index} needs "id" and "file_name"')
    extension = os.path.splitext(info['file_name'])[1].lower()
    if extension not in _IMAGE_FORMATS:
      raise converter_utils.ConversionError(
          f'{panoptic_json}: image {info["file_name"]} is not a JPEG or PNG')
    image_path = os.path.join(image_dir, info['file_name'])
    if not converter_utils.is_file(image_path):
      if skip_missing:
        missing_images.append(image_path)
        annotations.pop(info['id'], None)
        continue
      raise converter_utils.ConversionError(
          f'image not found: {image_path} (listed in {panoptic_json}; use --skip_missing)')
    images.append((image_path, info['id']))
    image_formats[info['id']] = _IMAGE_FORMATS[extension]
  images.sort(key=lambda item: item[0])
  jobs, skipped = converter_utils.pair_images_with_annotations(images, annotations, panoptic_dir,
                                                               skip_missing)
  if missing_images:
    skipped.setdefault('image missing', []).extend(missing_images)
  # Store the image file stem as the name, like the COCO converter.
  jobs = [(path, os.path.splitext(os.path.basename(path))[0], png, segments, image_formats[key])
          for (path, key, png, segments) in jobs]
  make_example = functools.partial(_example, spec=spec, label_format=label_format)
  descriptor_path = descriptor_path or os.path.join(output_dir, f'{dataset_name}.json')
  merge_descriptor(descriptor_path, descriptor, split, 0)  # A mismatch fails before any work.
  overwrite = write_kwargs.pop('overwrite', False)
  with converter_utils.OutputRun(output_dir, [split], overwrite) as run:
    summary = converter_utils.write_split(split, jobs, make_example, output_dir,
                                          skipped=skipped, run=run, **write_kwargs)
    merged = merge_descriptor(descriptor_path, descriptor, split, summary.num_examples)
    run.commit()
  file_io.write_text_atomic(descriptor_path, json.dumps(merged, indent=1) + '\n', overwrite=True)
  return summary, descriptor_path


def _example(job, spec, label_format):
  image_path, name, png_path, segments, image_format = job
  return converter_utils.panoptic_example(image_path, image_format, name, png_path, segments,
                                          spec, label_format)


def main(argv: Optional[Sequence[str]] = None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--dataset_name', required=True, help='Name stored in the descriptor.')
  parser.add_argument('--split', required=True, help='Split name used in the shard names.')
  parser.add_argument('--image_dir', required=True, help='Folder of the images.')
  parser.add_argument('--panoptic_json', required=True, help='COCO panoptic JSON of the split.')
  parser.add_argument('--panoptic_dir', default=None,
                      help='Folder of the panoptic PNGs (default: the JSON path without .json).')
  parser.add_argument('--descriptor_path', default=None,
                      help='Descriptor JSON to create or update (default OUT/<dataset_name>.json).')
  parser.add_argument('--label_divisor', type=int, default=256,
                      help='Panoptic label divisor (more than the most instances of a class).')
  parser.add_argument('--num_mask_slots', type=int, default=128)
  parser.add_argument('--high_resolution_output_stride', type=int, default=4, choices=(2, 4))
  converter_utils.add_bool_flag(parser, 'use_auxiliary_semantic_decoder', True,
                                'kMaX auxiliary semantic decoder')
  parser.add_argument('--transformer_decoder_drop_path_keep_prob', type=float, default=0.8)
  converter_utils.add_common_flags(parser, None)
  args = parser.parse_args(argv)
  kmax_options = {
      'num_mask_slots': args.num_mask_slots,
      'high_resolution_output_stride': args.high_resolution_output_stride,
      'use_auxiliary_semantic_decoder': args.use_auxiliary_semantic_decoder,
      'transformer_decoder_drop_path_keep_prob': args.transformer_decoder_drop_path_keep_prob,
  }
  summary, descriptor_path = convert(
      args.image_dir, args.panoptic_json, args.panoptic_dir, args.split, args.output_dir,
      args.dataset_name, args.descriptor_path, args.label_divisor, args.label_format,
      args.treat_crowd_as_ignore, args.skip_missing, kmax_options, num_shards=args.num_shards,
      num_workers=args.num_workers, target_shard_mb=args.target_shard_mb,
      overwrite=args.overwrite, skip_corrupt=args.skip_corrupt, progress=args.progress)
  converter_utils.print_summary([summary], args.output_dir)
  sys.stderr.write(f'Descriptor: {descriptor_path}\n')
  return summary, descriptor_path


if __name__ == '__main__':
  sys.exit(converter_utils.run_cli(main))
