"""Shared machinery of the dataset converters (COCO, Cityscapes, ADE20K, generic, demo).

The converters write DeepLab2's TFRecord format: one `tf.train.Example` per image with the
feature keys of `kmax_tf.common.KEY_*`, sharded as `<split>-%05d-of-%05d.tfrecord`. This module
holds what they share:

* turning a COCO-panoptic segment-id map plus its `segments_info` into a DeepLab2 panoptic label
  (`semantic * label_divisor + instance`, contiguous class ids, crowd handling as DeepLab2);
* building the `tf.train.Example` (image bytes passed through unchanged when already RGB);
* writing a split: a thread pool over images, the stderr progress bar of `kmax_tf.progress`, a
  shard count sized for the data and a summary of what was written and skipped;
* atomic runs (`OutputRun`): every file of a run is staged in a hidden folder of the output
  folder and moved into place only when all splits succeeded, so a failed run leaves nothing
  behind and the same command can be rerun. All reads and writes go through `tf.io.gfile`
  (gs://, ram://);
* the command-line flags every converter shares.
"""

import argparse
import collections
import concurrent.futures
import dataclasses
import functools
import glob
import io
import json
import math
import os
import sys
import time
import uuid
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from PIL import Image

from kmax_tf import panoptic_rgb
from kmax_tf import progress as progress_lib
from kmax_tf.data import label_codec
from kmax_tf.data import tfrecord_decoder

LABEL_FORMAT_RAW = label_codec.LABEL_FORMAT_RAW
LABEL_FORMAT_PANOPTIC_PNG = label_codec.LABEL_FORMAT_PANOPTIC_PNG
LABEL_FORMATS = label_codec.SUPPORTED_LABEL_FORMATS

DEFAULT_TARGET_SHARD_MB = 128.0
_SHARD_PATTERN = '%s-%05d-of-%05d.tfrecord'


class ConversionError(ValueError):
  """Bad converter input; the message names the offending file or field."""


class CorruptInputError(ConversionError):
  """An image or annotation PNG that cannot be decoded; `path` names it."""

  def __init__(self, message: str, path: str):
    super().__init__(message)
    self.path = path


def is_file(path: str) -> bool:
  """`os.path.isfile` through tf.io.gfile (gs://, ram://)."""
  return tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)


def read_bytes(path: str) -> bytes:
  with tf.io.gfile.GFile(path, 'rb') as f:
    return f.read()


# ---------------------------------------------------------------------------------------------
# Labels.


@dataclasses.dataclass(frozen=True)
class PanopticLabelSpec:
  """How dataset segments become DeepLab2 panoptic ids.

  Attributes:
    category_to_class: original dataset category id -> contiguous class id (0 = void).
    thing_class_ids: contiguous class ids that have instances.
    label_divisor: panoptic id = class * label_divisor + instance.
    ignore_label: class id written for unlabeled (and, if requested, crowd) pixels.
    treat_crowd_as_ignore: crowd thing segments get `ignore_label` (DeepLab2's default); else
      they keep their class with instance 0.
    check_area: require each segment's pixel count to equal its `area` field (COCO and
      Cityscapes JSONs are exact; DeepLab2 does not check ADE20K's).
  """
  category_to_class: Mapping[int, int]
  thing_class_ids: frozenset
  label_divisor: int
  ignore_label: int
  treat_crowd_as_ignore: bool = True
  check_area: bool = True


def label_spec_from_descriptor(descriptor, treat_crowd_as_ignore: bool = True,
                               check_area: bool = True) -> PanopticLabelSpec:
  """The label spec of a registered dataset (a `dataset_descriptors.DatasetDescriptor`).

  Category ids come from `descriptor.dataset_category_ids` (identity when None). The void class
  maps from its dataset id only when that id is not 0 (ADE20K's 255), as 0 is never a real COCO
  category.
  """
  category_ids = descriptor.dataset_category_ids or tuple(range(descriptor.num_classes))
  category_to_class = {}
  for class_id, category_id in enumerate(category_ids):
    if class_id == descriptor.ignore_label and category_id == 0:
      continue
    category_to_class[category_id] = class_id
  return PanopticLabelSpec(
      category_to_class=category_to_class,
      thing_class_ids=frozenset(descriptor.class_has_instances_list),
      label_divisor=descriptor.panoptic_label_divisor, ignore_label=descriptor.ignore_label,
      treat_crowd_as_ignore=treat_crowd_as_ignore, check_area=check_area)


def read_segment_id_png(path: str) -> np.ndarray:
  """Reads a COCO-panoptic PNG (id = R + 256 * G + 65536 * B).

  Args:
    path: the PNG file.

  Returns:
    segment ids: int32 [H, W].
  """
  if not is_file(path):
    raise ConversionError(f'panoptic annotation PNG not found: {path}')
  try:
    with Image.open(io.BytesIO(read_bytes(path))) as png:
      if png.mode != 'RGB':
        raise ConversionError(
            f'panoptic annotation {path} must be an RGB PNG, got mode {png.mode!r}')
      rgb = np.asarray(png)
  except (OSError, SyntaxError) as e:
    raise CorruptInputError(f'cannot read panoptic annotation PNG {path}: {e}', path) from e
  return panoptic_rgb.rgb_to_ids(rgb, np.int32)


def panoptic_from_segments(
    segment_ids: np.ndarray, segments: Sequence[Mapping[str, Any]], spec: PanopticLabelSpec,
    source: str) -> Tuple[np.ndarray, Dict[str, int]]:
  """Builds a DeepLab2 panoptic label from a COCO-panoptic segment map.

  Thing instances are numbered 1, 2, ... per class in the order of `segments` (DeepLab2's order);
  pixels not covered by any listed segment are void (`ignore_label`, instance 0).

  Args:
    segment_ids: int32 [H, W], the decoded panoptic PNG.
    segments: the annotation's `segments_info` (`id`, `category_id`, `iscrowd`, `area`).
    spec: category mapping and label conventions.
    source: file name used in error messages.

  Returns:
    (panoptic label int32 [H, W], counts dict with `segments`, `thing_instances`, `crowd_segments`).
  """
  semantic = np.full(segment_ids.shape, spec.ignore_label, dtype=np.int32)
  instance = np.zeros(segment_ids.shape, dtype=np.int32)
  instances_per_class = collections.Counter()
  counts = collections.Counter()
  for segment in segments:
    for field in ('id', 'category_id'):
      if field not in segment:
        raise ConversionError(f'{source}: segment {segment} has no {field!r} field')
    mask = segment_ids == segment['id']
    if spec.check_area and 'area' in segment:
      area = int(np.count_nonzero(mask))
      if area != segment['area']:
        raise ConversionError(
            f'{source}: segment id {segment["id"]} has {area} pixels in the PNG but area '
            f'{segment["area"]} in the JSON')
    category_id = segment['category_id']
    if category_id not in spec.category_to_class:
      raise ConversionError(f'{source}: unknown category id {category_id} in segment '
                            f'{segment["id"]}')
    class_id = spec.category_to_class[category_id]
    semantic[mask] = class_id
    counts['segments'] += 1
    is_crowd = bool(segment.get('iscrowd', 0))
    if class_id in spec.thing_class_ids:
      if is_crowd:
        counts['crowd_segments'] += 1
        if spec.treat_crowd_as_ignore:
          semantic[mask] = spec.ignore_label
        continue
      instances_per_class[class_id] += 1
      if instances_per_class[class_id] >= spec.label_divisor:
        raise ConversionError(f'{source}: more than {spec.label_divisor - 1} instances of class '
                              f'{class_id}; they do not fit under label divisor '
                              f'{spec.label_divisor}')
      instance[mask] = instances_per_class[class_id]
      counts['thing_instances'] += 1
    elif is_crowd:
      raise ConversionError(f'{source}: stuff segment {segment["id"]} (category {category_id}) '
                            'is marked iscrowd')
  _check_all_ids_listed(segment_ids, segments, source)
  return semantic * spec.label_divisor + instance, dict(counts)


def _check_all_ids_listed(segment_ids: np.ndarray, segments: Sequence[Mapping[str, Any]],
                          source: str) -> None:
  """Every non-zero id of the PNG must be in segments_info (as the COCO PQ evaluation demands).

  An unlisted id would silently become void; it is an error wherever it lies.
  """
  listed = np.asarray(sorted({int(segment['id']) for segment in segments} | {0}), np.int64)
  present = np.unique(segment_ids)
  unlisted = present[~np.isin(present, listed)]
  if unlisted.size:
    raise ConversionError(f'{source}: segment id(s) {unlisted[:10].tolist()} appear in the PNG '
                          'but not in its JSON segments_info')


def encode_panoptic_label(panoptic: np.ndarray, label_format: str, label_divisor: int) -> bytes:
  """Encodes a panoptic label for the TFRecord with the shared label codec.

  Args:
    panoptic: int32 [H, W], `semantic * label_divisor + instance`.
    label_format: 'raw' (DeepLab2's little-endian int32) or 'panoptic_png'.
    label_divisor: the dataset's panoptic label divisor.

  Returns:
    the encoded bytes.
  """
  if label_format not in LABEL_FORMATS:
    raise ConversionError(f'unknown label format {label_format!r}; expected one of '
                          f'{LABEL_FORMATS}')
  if panoptic.size and panoptic.max() >= 2**24 and label_format == LABEL_FORMAT_PANOPTIC_PNG:
    raise ConversionError(f'panoptic id {panoptic.max()} (label divisor {label_divisor}) does '
                          'not fit a panoptic PNG; use --label_format=raw')
  return label_codec.encode_label(np.asarray(panoptic, np.int32), label_format)


# ---------------------------------------------------------------------------------------------
# Examples.


def read_image_file(path: str) -> bytes:
  if not is_file(path):
    raise ConversionError(f'image not found: {path}')
  return read_bytes(path)


def image_size_and_rgb_bytes(image_bytes: bytes, image_format: str,
                             source: str) -> Tuple[int, int, bytes]:
  """Returns (height, width, bytes) with non-RGB images re-encoded as RGB, like DeepLab2.

  No EXIF rotation is applied: TensorFlow's decoder ignores it, so sizes must be those of the
  stored pixel grid.
  """
  try:
    with Image.open(io.BytesIO(image_bytes)) as image:
      image.load()
      width, height = image.size
      if image.mode != 'RGB':
        buffer = io.BytesIO()
        image.convert('RGB').save(buffer, format='JPEG' if image_format in ('jpg', 'jpeg')
                                  else 'PNG')
        image_bytes = buffer.getvalue()
  except (OSError, SyntaxError) as e:
    raise CorruptInputError(f'cannot decode image {source}: {e}', source) from e
  return height, width, image_bytes


def create_tf_example(image_bytes: bytes, image_format: str, filename: str,
                      label_bytes: Optional[bytes] = None, label_format: Optional[str] = None,
                      height: Optional[int] = None, width: Optional[int] = None):
  """Builds one DeepLab2 `tf.train.Example`.

  Args:
    image_bytes: encoded RGB image ('jpeg' or 'png'), stored unchanged.
    image_format: 'jpeg', 'jpg' or 'png'.
    filename: stored as `image/filename` (DeepLab2 stores the file stem).
    label_bytes: encoded label, or None for unlabeled splits.
    label_format: 'raw' or 'panoptic_png' (None iff label_bytes is None).
    height, width: image size; decoded from `image_bytes` when not given.

  Returns:
    tf.train.Example.
  """
  if image_format not in ('jpeg', 'jpg', 'png'):
    raise ConversionError(f'{filename}: unsupported image format {image_format!r}')
  if height is None or width is None:
    height, width, image_bytes = image_size_and_rgb_bytes(image_bytes, image_format, filename)
  if label_bytes is not None:
    if label_format not in LABEL_FORMATS:
      raise ConversionError(f'{filename}: unsupported label format {label_format!r}')
    if label_format == LABEL_FORMAT_RAW and len(label_bytes) != height * width * 4:
      raise ConversionError(f'{filename}: raw label has {len(label_bytes)} bytes, expected '
                            f'{height * width * 4} for a {height}x{width} int32 map')
  return tfrecord_decoder.example_from_encoded(image_bytes, image_format, filename, height,
                                               width, label_bytes, label_format)


def panoptic_example(image_path: str, image_format: str, filename: str,
                     panoptic_png_path: Optional[str], segments: Sequence[Mapping[str, Any]],
                     spec: PanopticLabelSpec, label_format: str) -> Tuple[bytes, Dict[str, int]]:
  """Reads one image + COCO-panoptic annotation and serializes its Example.

  Args:
    image_path: the image file.
    image_format: 'jpeg' or 'png' (stored as `image/format`).
    filename: stored name.
    panoptic_png_path: the annotation PNG, or None for an unlabeled split.
    segments: the annotation's `segments_info`.
    spec: label conventions.
    label_format: 'raw' or 'panoptic_png'.

  Returns:
    (serialized Example, counts).
  """
  height, width, image_bytes = image_size_and_rgb_bytes(
      read_image_file(image_path), image_format, image_path)
  if panoptic_png_path is None:
    example = create_tf_example(image_bytes, image_format, filename, height=height, width=width)
    return example.SerializeToString(), {}
  segment_ids = read_segment_id_png(panoptic_png_path)
  if segment_ids.shape != (height, width):
    raise ConversionError(
        f'label {panoptic_png_path} is {segment_ids.shape[0]}x{segment_ids.shape[1]} but image '
        f'{image_path} is {height}x{width}')
  panoptic, counts = panoptic_from_segments(segment_ids, segments, spec, panoptic_png_path)
  label_bytes = encode_panoptic_label(panoptic, label_format, spec.label_divisor)
  example = create_tf_example(image_bytes, image_format, filename, label_bytes, label_format,
                              height=height, width=width)
  return example.SerializeToString(), counts


# ---------------------------------------------------------------------------------------------
# COCO-panoptic JSON.


def load_panoptic_json(json_path: str) -> Dict[str, Any]:
  if not is_file(json_path):
    raise ConversionError(f'panoptic annotation JSON not found: {json_path}')
  try:
    data = json.loads(read_bytes(json_path))
  except (OSError, tf.errors.OpError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ConversionError(f'cannot read panoptic annotation JSON {json_path}: {e}') from e
  if not isinstance(data, dict) or 'annotations' not in data:
    raise ConversionError(f'{json_path} has no "annotations" list (not COCO-panoptic format)')
  return data


def annotations_by_key(data: Mapping[str, Any], json_path: str,
                       key: str = 'file_stem') -> Dict[Any, Tuple[str, List[Any]]]:
  """Maps each annotation to (PNG file name, segments_info).

  Args:
    data: the loaded COCO-panoptic JSON.
    json_path: for error messages.
    key: 'file_stem' (the PNG name without extension, as DeepLab2 matches COCO/ADE20K images) or
      'image_id' (Cityscapes).

  Returns:
    dict key -> (annotation PNG file name, segments list).
  """
  result = {}
  seen_image_ids = set()
  for index, annotation in enumerate(data['annotations']):
    for field in ('image_id', 'file_name', 'segments_info'):
      if field not in annotation:
        raise ConversionError(f'{json_path}: annotation #{index} has no {field!r} field')
    image_id = annotation['image_id']
    if image_id in seen_image_ids:
      raise ConversionError(f'{json_path}: image id {image_id} is annotated twice')
    seen_image_ids.add(image_id)
    file_name = annotation['file_name']
    lookup = os.path.splitext(file_name)[0] if key == 'file_stem' else image_id
    result[lookup] = (file_name, annotation['segments_info'])
  return result


def pair_images_with_annotations(
    images: Sequence[Tuple[str, str]], annotations: Optional[Mapping[Any, Tuple[str, Any]]],
    panoptic_dir: str, skip_missing: bool) -> Tuple[List[Tuple], Dict[str, List[str]]]:
  """Pairs images with their annotation; returns (jobs, skipped).

  A job is (image path, stored name, annotation PNG path or None, segments). Images without an
  annotation entry or PNG, and annotations without an image, are errors unless `skip_missing`,
  which skips and reports them instead.

  Args:
    images: (image path, key) in output order; the key looks up `annotations` and is the stored
      file name.
    annotations: key -> (PNG file name, segments), or None for an unlabeled split.
    panoptic_dir: folder of the annotation PNGs.
    skip_missing: skip and report instead of failing.
  """
  jobs, skipped = [], {}
  keys = set()
  for image_path, key in images:
    keys.add(key)
    if annotations is None:
      jobs.append((image_path, key, None, ()))
      continue
    if key not in annotations:
      if skip_missing:
        skipped.setdefault('no annotation in JSON', []).append(image_path)
        continue
      raise ConversionError(
          f'image {image_path} has no annotation in the panoptic JSON (use --skip_missing to skip)')
    png_name, segments = annotations[key]
    png_path = os.path.join(panoptic_dir, png_name)
    if not is_file(png_path):
      if skip_missing:
        skipped.setdefault('annotation PNG missing', []).append(png_path)
        continue
      raise ConversionError(
          f'panoptic annotation PNG not found: {png_path} (for image {image_path}; use '
          '--skip_missing to skip)')
    jobs.append((image_path, key, png_path, segments))
  if annotations is not None:
    orphans = sorted(str(k) for k in set(annotations) - keys)
    if orphans:
      if not skip_missing:
        raise ConversionError(f'{len(orphans)} annotation(s) have no image, e.g. {orphans[0]} '
                              '(use --skip_missing to skip)')
      skipped['image missing'] = orphans
  return jobs, skipped


def example_from_job(job, spec: PanopticLabelSpec, label_format: str, image_format: str):
  """`panoptic_example` for a job of `pair_images_with_annotations`."""
  image_path, name, png_path, segments = job
  return panoptic_example(image_path, image_format, name, png_path, segments, spec, label_format)


# ---------------------------------------------------------------------------------------------
# Writing splits.


@dataclasses.dataclass
class SplitSummary:
  """What a converter wrote for one split."""
  split: str
  num_examples: int = 0
  num_shards: int = 0
  num_bytes: int = 0
  shard_paths: List[str] = dataclasses.field(default_factory=list)
  counts: Dict[str, int] = dataclasses.field(default_factory=dict)
  skipped: Dict[str, List[str]] = dataclasses.field(default_factory=dict)
  notes: List[str] = dataclasses.field(default_factory=list)
  seconds: float = 0.0

  def format(self) -> str:
    parts = [f'{self.split}: {self.num_examples} examples in {self.num_shards} shard(s), '
             f'{self.num_bytes / 2**20:.1f} MiB, {self.seconds:.1f} s']
    if self.counts:
      parts.append(', '.join(f'{k}={v}' for k, v in sorted(self.counts.items())))
    for reason, names in sorted(self.skipped.items()):
      shown = ', '.join(names[:5]) + (' ...' if len(names) > 5 else '')
      parts.append(f'SKIPPED {len(names)} ({reason}): {shown}')
    parts += [f'note: {note}' for note in self.notes]
    return '; '.join(parts)


def shard_path(output_dir: str, split: str, index: int, num_shards: int) -> str:
  return os.path.join(output_dir, _SHARD_PATTERN % (split, index, num_shards))


def existing_shards(output_dir: str, split: str) -> List[str]:
  return sorted(tf.io.gfile.glob(os.path.join(glob.escape(output_dir),
                                              f'{glob.escape(split)}-?????-of-?????.tfrecord')))


def choose_num_shards(num_examples: int, bytes_per_example: float,
                      target_shard_bytes: float) -> int:
  """Shards of about `target_shard_bytes`, at least one example each."""
  if num_examples <= 0:
    return 1
  wanted = int(math.ceil(num_examples * bytes_per_example / max(target_shard_bytes, 1.0)))
  return max(1, min(wanted, num_examples))


def _shard_bounds(num_examples: int, num_shards: int) -> List[Tuple[int, int]]:
  # Even split, contiguous and in input order (shard sizes differ by at most one).
  return [(i * num_examples // num_shards, (i + 1) * num_examples // num_shards)
          for i in range(num_shards)]


class OutputRun:
  """Makes one converter run atomic: all or nothing lands in `output_dir`.

  Files are written to a hidden staging folder `<output_dir>/.kmax_staging_<id>/`
  and moved into place (`tf.io.gfile.rename`) by `commit()`, after every split
  succeeded. A run that fails leaves `output_dir` as it was: the staging folder
  is deleted, and so are the folders the run created, so the same command can
  simply be rerun. Existing shards of the splits to convert are an error before
  any work, unless `overwrite`; then they are replaced (stale ones deleted) at
  commit.

  Example:
    with OutputRun(output_dir, ['train', 'val'], overwrite=False) as run:
      write_split('train', ..., output_dir, run=run)
      write_split('val', ..., output_dir, run=run)
      run.commit()
  """

  def __init__(self, output_dir: str, splits: Sequence[str], overwrite: bool = False,
               files: Sequence[str] = ()):
    """Args.

    Args:
      output_dir: the folder the run publishes to.
      splits: the splits whose shards the run writes.
      overwrite: replace existing shards and files.
      files: other files (relative to `output_dir`) the run writes; existing
        ones are an error unless `overwrite`.
    """
    self.output_dir = output_dir
    self._splits = list(splits)
    self._overwrite = overwrite
    self._files = list(files)
    self._created_folders: List[str] = []
    self.staging_dir = ''
    self._staged: List[Tuple[str, str]] = []  # (staged path, final path)
    self._committed = False

  def __enter__(self) -> 'OutputRun':
    if not self._overwrite:
      for split in self._splits:
        previous = existing_shards(self.output_dir, split)
        if previous:
          raise ConversionError(
              f'{self.output_dir} already has {len(previous)} shard(s) of split {split!r} '
              f'(e.g. {os.path.basename(previous[0])}); pass --overwrite to replace')
      for name in self._files:
        path = os.path.join(self.output_dir, name)
        if tf.io.gfile.exists(path):
          raise ConversionError(f'{path} already exists; pass --overwrite to replace it')
    # The folders this run creates (deepest first), removed again if it fails.
    scheme_end = self.output_dir.find('://') + 3 if '://' in self.output_dir else 0
    folder = self.output_dir.rstrip('/')
    while len(folder) > scheme_end and not tf.io.gfile.exists(folder):
      self._created_folders.append(folder)
      folder = os.path.dirname(folder)
    self.staging_dir = os.path.join(self.output_dir, f'.kmax_staging_{uuid.uuid4().hex[:12]}')
    tf.io.gfile.makedirs(self.staging_dir)
    return self

  def stage(self, relative_path: str) -> str:
    """A staging path for `relative_path`; `commit()` moves it to `output_dir/relative_path`."""
    # A unique name: worker threads stage files concurrently.
    staged = os.path.join(self.staging_dir, uuid.uuid4().hex)
    self._staged.append((staged, os.path.join(self.output_dir, relative_path)))
    return staged

  def set_destination(self, staged_path: str, relative_path: str):
    """Changes where a staged file goes (shards are named once their count is known)."""
    final = os.path.join(self.output_dir, relative_path)
    self._staged = [(s, final if s == staged_path else f) for s, f in self._staged]

  def unstage(self, staged_path: str):
    """Drops a staged file (e.g. an empty shard)."""
    self._staged = [(s, f) for s, f in self._staged if s != staged_path]
    if tf.io.gfile.exists(staged_path):
      tf.io.gfile.remove(staged_path)

  def write_file(self, relative_path: str, data: bytes):
    with tf.io.gfile.GFile(self.stage(relative_path), 'wb') as f:
      f.write(data)

  def commit(self):
    """Moves every staged file into place and deletes stale shards of the converted splits."""
    finals = {final for _, final in self._staged}
    stale = [path for split in self._splits for path in existing_shards(self.output_dir, split)
             if path not in finals]
    for staged, final in self._staged:
      tf.io.gfile.makedirs(os.path.dirname(final))
      tf.io.gfile.rename(staged, final, overwrite=self._overwrite)
    for path in stale:
      tf.io.gfile.remove(path)
    self._committed = True

  def __exit__(self, exc_type, exc, traceback):
    if self.staging_dir and tf.io.gfile.exists(self.staging_dir):
      tf.io.gfile.rmtree(self.staging_dir)
    if not self._committed:
      for folder in self._created_folders:  # Deepest first.
        if tf.io.gfile.isdir(folder) and not tf.io.gfile.listdir(folder):
          tf.io.gfile.rmtree(folder)
    return False


def _make_or_skip(make_example, skip_corrupt: bool, job):
  """make_example(job), or (None, reason) for a corrupt input when `skip_corrupt`."""
  try:
    return make_example(job)
  except CorruptInputError as error:
    if not skip_corrupt:
      raise ConversionError(f'{error} (use --skip_corrupt to skip it)') from error
    return None, error.path


def write_split(split: str, jobs: Sequence[Any],
                make_example: Callable[[Any], Tuple[bytes, Mapping[str, int]]],
                output_dir: str, num_shards: Optional[int] = None, num_workers: int = 1,
                target_shard_mb: float = DEFAULT_TARGET_SHARD_MB, overwrite: bool = False,
                skipped: Optional[Mapping[str, List[str]]] = None,
                progress: bool = True, skip_corrupt: bool = False,
                run: Optional[OutputRun] = None) -> SplitSummary:
  """Serializes `jobs` with `make_example` in parallel and writes the shards of one split.

  Records keep the order of `jobs`; shard i holds a contiguous slice. Shards are
  staged in `run` (see `OutputRun`) and published only when the run commits; without
  a `run`, the split is a run of its own. Existing shards of the split are an
  error unless `overwrite`.

  Args:
    split: split name used in shard names.
    jobs: one item per image, passed to `make_example`.
    make_example: job -> (serialized tf.train.Example, counts dict). Runs in
      worker threads; raises `CorruptInputError` for an undecodable file.
    output_dir: created if missing.
    num_shards: shard count; by default sized to ~`target_shard_mb` per shard.
    num_workers: worker threads.
    target_shard_mb: target shard size in MiB for the default shard count.
    overwrite: replace existing shards of this split (only without `run`;
      a run has its own).
    skipped: reason -> names skipped on request, reported in the summary.
    progress: draw a progress bar on stderr.
    skip_corrupt: skip (and report) undecodable images and annotation PNGs;
      otherwise the first one ends the run, naming the file.
    run: the converter run the split belongs to.

  Returns:
    SplitSummary (its shard paths are the published names).
  """
  if run is None:
    with OutputRun(output_dir, [split], overwrite) as own_run:
      summary = write_split(split, jobs, make_example, output_dir, num_shards, num_workers,
                            target_shard_mb, skipped=skipped, progress=progress,
                            skip_corrupt=skip_corrupt, run=own_run)
      own_run.commit()
    return summary
  start_time = time.monotonic()
  if num_shards is not None and num_shards < 1:
    raise ConversionError(f'--num_shards must be >= 1, got {num_shards}')

  summary = SplitSummary(split=split, skipped={k: list(v) for k, v in (skipped or {}).items()})
  corrupt = []
  counts = collections.Counter()
  jobs = list(jobs)
  make = functools.partial(_make_or_skip, make_example, skip_corrupt)
  first_results = []
  if num_shards is None:
    # Size the shards from the first example that can be read.
    for job in jobs:
      first_results.append(make(job))
      if first_results[-1][0] is not None:
        break
    first_size = next((len(r[0]) for r in first_results if r[0] is not None), 0)
    num_shards = choose_num_shards(len(jobs), first_size + 16, target_shard_mb * 2**20)
  bar = progress_lib.ProgressBar(len(jobs), f'{split}', enabled=progress)
  shards = []  # (staged path, number of examples, bytes)
  try:
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
      for begin, end in _shard_bounds(len(jobs), num_shards):
        known = first_results[begin:end]
        results = _chain(known, pool.map(make, jobs[begin + len(known):end]))
        staged = run.stage(split)  # Renamed below, once the shard count is known.
        num_examples = 0
        with tf.io.TFRecordWriter(staged) as writer:
          for serialized, example_counts in results:
            bar.update()
            if serialized is None:
              corrupt.append(example_counts)
              continue
            writer.write(serialized)
            counts.update(example_counts)
            num_examples += 1
        shards.append((staged, num_examples))
  finally:
    bar.close()
  if corrupt:
    summary.skipped['corrupt file'] = corrupt
    # Skipped inputs can empty a shard: drop it (a split keeps at least one shard).
    for staged, num_examples in list(shards):
      if num_examples == 0 and len(shards) > 1:
        run.unstage(staged)
        shards.remove((staged, num_examples))
  num_shards = len(shards)
  for index, (staged, num_examples) in enumerate(shards):
    final = shard_path(output_dir, split, index, num_shards)
    run.set_destination(staged, os.path.basename(final))
    summary.shard_paths.append(final)
    summary.num_examples += num_examples
    summary.num_bytes += tf.io.gfile.stat(staged).length
  summary.num_shards = num_shards
  summary.counts = dict(counts)
  summary.seconds = time.monotonic() - start_time
  return summary


def _chain(first: Iterable[Any], rest: Iterable[Any]):
  yield from first
  yield from rest


def print_summary(summaries: Sequence[SplitSummary], output_dir: str, stream=None):
  stream = stream if stream is not None else sys.stderr
  stream.write(f'Wrote to {output_dir}:\n')
  for summary in summaries:
    stream.write('  ' + summary.format() + '\n')
  stream.flush()


# ---------------------------------------------------------------------------------------------
# Command line.


def parse_bool(text: str) -> bool:
  lowered = str(text).lower()
  if lowered in ('1', 'true', 't', 'yes', 'y'):
    return True
  if lowered in ('0', 'false', 'f', 'no', 'n'):
    return False
  raise argparse.ArgumentTypeError(f'expected true/false, got {text!r}')


def add_bool_flag(parser: argparse.ArgumentParser, name: str, default: bool, help_text: str):
  """Adds `--name[=true|false]` and absl's `--noname` spelling."""
  parser.add_argument(f'--{name}', type=parse_bool, nargs='?', const=True, default=default,
                      help=f'{help_text} (default {default})')
  parser.add_argument(f'--no{name}', dest=name, action='store_false', help=argparse.SUPPRESS)


def add_common_flags(parser: argparse.ArgumentParser, splits: Optional[Sequence[str]]):
  """Adds the flags all converters share; `--splits` only when `splits` is given."""
  parser.add_argument('--output_dir', required=True,
                      help='Directory for the <split>-%%05d-of-%%05d.tfrecord shards.')
  if splits:
    parser.add_argument('--splits', default=','.join(splits),
                        help=f'Comma-separated splits to convert (default {",".join(splits)}).')
  parser.add_argument('--label_format', choices=LABEL_FORMATS, default=LABEL_FORMAT_RAW,
                      help='raw: DeepLab2 int32 labels (default); panoptic_png: compact RGB PNG.')
  parser.add_argument('--num_shards', type=int, default=None,
                      help='Shards per split (default: about --target_shard_mb each).')
  parser.add_argument('--target_shard_mb', type=float, default=DEFAULT_TARGET_SHARD_MB,
                      help='Target shard size for the default shard count.')
  parser.add_argument('--num_workers', type=int, default=min(8, os.cpu_count() or 1),
                      help='Worker threads reading and encoding images.')
  add_bool_flag(parser, 'treat_crowd_as_ignore', True,
                'Label crowd thing segments as ignore, as DeepLab2 does')
  add_bool_flag(parser, 'skip_missing', False,
                'Skip (and report) images without annotation or annotation files; '
                'otherwise they are an error')
  add_bool_flag(parser, 'skip_corrupt', False,
                'Skip (and report) images and annotation PNGs that cannot be decoded; '
                'otherwise the first one stops the run, naming the file')
  add_bool_flag(parser, 'overwrite', False, 'Replace existing shards of the converted splits')
  add_bool_flag(parser, 'progress', True, 'Draw a progress bar on stderr')


def parse_splits(text: str, allowed: Sequence[str]) -> List[str]:
  splits = [s.strip() for s in text.split(',') if s.strip()]
  unknown = [s for s in splits if s not in allowed]
  if unknown or not splits:
    raise ConversionError(f'--splits: unknown split(s) {unknown}; choose from {list(allowed)}')
  return splits


def run_cli(main: Callable[[Optional[Sequence[str]]], Any],
            argv: Optional[Sequence[str]] = None) -> int:
  """Runs a converter main; bad input ends with a one-line error instead of a traceback."""
  try:
    main(argv)
  except ConversionError as e:
    sys.stderr.write(f'error: {e}\n')
    return 2
  return 0
