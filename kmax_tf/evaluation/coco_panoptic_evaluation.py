"""PQ of COCO-panoptic-format files, equal to panopticapi's `pq_compute`.

Takes the inputs of `panopticapi.evaluation.pq_compute` (GT and prediction
JSON files plus their PNG folders) and returns the same dict, with the same
float64 values: images are matched with `panoptic_quality.match_image` and their
IoUs are folded in panopticapi's order, including its split of the image list
into `multiprocessing.cpu_count()` chunks whose sums are added at the end.

Differences on purpose: inputs are validated before any PNG is decoded (image
sets, file names, duplicate ids, unknown categories), and a segment id present
in a PNG but not in its JSON, or the reverse, is an error for GT as well as for
predictions. PNG decoding is fast (`panoptic_png`) and runs on `workers`
threads. With the optional C extension `_pqfast` (see setup.py), each image
pair is unfiltered and pair-counted in one pass over the inflated rows;
without it (or with KMAX_DISABLE_PQFAST=1) decoded maps are counted with
numpy. Both give the same counts, hence the same numbers.
"""

import argparse
import dataclasses
import json
import os
import struct
import sys
import threading
import time
from concurrent import futures
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from kmax_tf import file_io
from kmax_tf.evaluation import panoptic_png
from kmax_tf.evaluation import panoptic_quality

_MAX_SEGMENT_ID = (1 << 24) - 1
# Lookup tables map 24-bit segment ids to segment indices; unknown ids map to
# this value.
_UNKNOWN = np.iinfo(np.uint16).max
_MAX_SEGMENTS_PER_IMAGE = 1 << 14


@dataclasses.dataclass(frozen=True)
class _ImageTask:
  """Everything one worker needs for one image (all checked already)."""
  gt_path: str
  pred_path: str
  gt_ids: np.ndarray  # int64 [G], ascending.
  gt_category: np.ndarray  # int64 [G], category positions.
  gt_is_crowd: np.ndarray  # bool [G].
  gt_area: np.ndarray  # int64 [G], from the JSON.
  crowd_segment_of_category: Dict[int, int]
  pred_ids: np.ndarray  # int64 [P], ascending.
  pred_category: np.ndarray  # int64 [P].


def _load_json(path: str, what: str) -> Dict[str, Any]:
  if not file_io.is_file(path):
    raise ValueError(f'{what} JSON file {path} does not exist.')
  try:
    content = json.loads(file_io.read_bytes(path))
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise ValueError(f'{what} JSON file {path} is not valid JSON: {error}') from error
  if not isinstance(content, dict) or 'annotations' not in content:
    raise ValueError(f'{what} JSON file {path} has no "annotations" list.')
  return content


def _parse_categories(gt_json: Dict[str, Any], path: str):
  if 'categories' not in gt_json:
    raise ValueError(f'GT JSON file {path} has no "categories" list.')
  category_ids, is_thing = [], []
  position = {}
  for category in gt_json['categories']:
    category_id = category.get('id')
    if not isinstance(category_id, int):
      raise ValueError(f'GT JSON file {path}: category {category} has no integer "id".')
    if category_id in position:
      raise ValueError(f'GT JSON file {path}: duplicate category id {category_id}.')
    if 'isthing' not in category:
      raise ValueError(f'GT JSON file {path}: category {category_id} has no "isthing" field.')
    position[category_id] = len(category_ids)
    category_ids.append(category_id)
    is_thing.append(category['isthing'] == 1)
  return category_ids, is_thing, position


def _annotations_by_image(content: Dict[str, Any], path: str, what: str):
  by_image = {}
  for annotation in content['annotations']:
    for key in ('image_id', 'file_name', 'segments_info'):
      if key not in annotation:
        raise ValueError(f'{what} JSON file {path}: an annotation has no "{key}": '
                         f'{str(annotation)[:200]}')
    image_id = annotation['image_id']
    if image_id in by_image:
      raise ValueError(f'{what} JSON file {path}: image_id {image_id!r} has more than one '
                       'annotation.')
    by_image[image_id] = annotation
  return by_image


def _segments(annotation: Dict[str, Any], category_position: Dict[int, int], json_path: str,
              png_path: str, what: str, need_area: bool):
  """Checks one annotation's segments_info; returns per-segment arrays by ascending id."""
  ids, categories, crowd, areas = [], [], [], []
  seen = set()
  for segment in annotation['segments_info']:
    segment_id = segment.get('id')
    if not isinstance(segment_id, int) or not 0 < segment_id <= _MAX_SEGMENT_ID:
      raise ValueError(f'{what} JSON file {json_path}, image {annotation["image_id"]!r} '
                       f'({png_path}): segment id {segment_id!r} is not an integer in '
                       f'[1, {_MAX_SEGMENT_ID}] (0 is VOID).')
    if segment_id in seen:
      raise ValueError(f'{what} JSON file {json_path}, image {annotation["image_id"]!r} '
                       f'({png_path}): duplicate segment id {segment_id}.')
    seen.add(segment_id)
    category_id = segment.get('category_id')
    if category_id not in category_position:
      raise ValueError(f'{what} JSON file {json_path}, image {annotation["image_id"]!r} '
                       f'({png_path}): segment id {segment_id} has unknown category_id '
                       f'{category_id!r}.')
    ids.append(segment_id)
    categories.append(category_position[category_id])
    crowd.append(segment.get('iscrowd', 0) == 1)
    if need_area:
      area = segment.get('area')
      areas.append(-1 if area is None else int(area))
  if len(ids) > _MAX_SEGMENTS_PER_IMAGE:
    raise ValueError(f'{what} JSON file {json_path}: {png_path} has {len(ids)} segments; at '
                     f'most {_MAX_SEGMENTS_PER_IMAGE} are supported.')
  order = np.argsort(np.asarray(ids, np.int64), kind='stable')
  ids = np.asarray(ids, np.int64)[order]
  categories = np.asarray(categories, np.int64)[order]
  crowd = np.asarray(crowd, bool)[order]
  areas = np.asarray(areas, np.int64)[order] if need_area else None
  return ids, categories, crowd, areas


def prepare_tasks(gt_json_file: str, pred_json_file: str, gt_folder: Optional[str] = None,
                  pred_folder: Optional[str] = None):
  """Reads and checks both JSON files and the PNG file list (no PNG is decoded).

  Returns:
    (tasks in GT annotation order, category_ids, is_thing).

  Raises:
    ValueError: naming the file, image and segment id of the first problem.
  """
  gt_json = _load_json(gt_json_file, 'GT')
  pred_json = _load_json(pred_json_file, 'Prediction')
  if gt_folder is None:
    gt_folder = gt_json_file.replace('.json', '')
  if pred_folder is None:
    pred_folder = pred_json_file.replace('.json', '')
  for folder, what in ((gt_folder, 'GT'), (pred_folder, 'Prediction')):
    if not file_io.is_dir(folder):
      raise ValueError(f'{what} PNG folder {folder} does not exist.')
  category_ids, is_thing, category_position = _parse_categories(gt_json, gt_json_file)
  gt_by_image = _annotations_by_image(gt_json, gt_json_file, 'GT')
  pred_by_image = _annotations_by_image(pred_json, pred_json_file, 'Prediction')
  missing = [i for i in gt_by_image if i not in pred_by_image]
  extra = [i for i in pred_by_image if i not in gt_by_image]
  if missing or extra:
    raise ValueError(
        f'The image sets differ: {len(missing)} GT image(s) of {gt_json_file} have no '
        f'prediction in {pred_json_file} (e.g. image_id {missing[:5]}), {len(extra)} '
        f'prediction(s) have no GT (e.g. image_id {extra[:5]}).')

  tasks: List[_ImageTask] = []
  missing_files = []
  for image_id, gt_annotation in gt_by_image.items():
    pred_annotation = pred_by_image[image_id]
    gt_path = os.path.join(gt_folder, gt_annotation['file_name'])
    pred_path = os.path.join(pred_folder, pred_annotation['file_name'])
    for path in (gt_path, pred_path):
      if not file_io.is_file(path):
        missing_files.append(path)
    gt_ids, gt_category, gt_crowd, gt_area = _segments(
        gt_annotation, category_position, gt_json_file, gt_path, 'GT', need_area=True)
    pred_ids, pred_category, _, _ = _segments(
        pred_annotation, category_position, pred_json_file, pred_path, 'Prediction',
        need_area=False)
    # panopticapi keeps the last crowd segment of each category (JSON order).
    crowd_of_category = {}
    index_of_id = {int(segment_id): k + 1 for k, segment_id in enumerate(gt_ids.tolist())}
    for segment in gt_annotation['segments_info']:
      if segment.get('iscrowd', 0) == 1:
        crowd_of_category[category_position[segment['category_id']]] = index_of_id[segment['id']]
    tasks.append(_ImageTask(gt_path, pred_path, gt_ids, gt_category, gt_crowd, gt_area,
                            crowd_of_category, pred_ids, pred_category))
  if missing_files:
    raise ValueError(f'{len(missing_files)} PNG file(s) do not exist, e.g. '
                     f'{missing_files[:5]}.')
  return tasks, category_ids, is_thing


class _Workspace:
  """Per-thread lookup tables (24-bit id -> segment index) and reusable buffers."""

  def __init__(self):
    self._tables = {}
    self._buffers = {}

  def _table(self, name: str) -> np.ndarray:
    # 32 MB each: made on first use (the C extension path needs none).
    table = self._tables.get(name)
    if table is None:
      table = np.full(1 << 24, _UNKNOWN, np.uint16)
      self._tables[name] = table
    return table

  @property
  def gt_table(self) -> np.ndarray:
    return self._table('gt')

  @property
  def pred_table(self) -> np.ndarray:
    return self._table('pred')

  def buffer(self, name: str, size: int, dtype) -> np.ndarray:
    buffer = self._buffers.get(name)
    if buffer is None or buffer.size < size:
      buffer = np.empty(size, dtype)
      self._buffers[name] = buffer
    return buffer[:size]


_thread_state = threading.local()


def _workspace() -> _Workspace:
  workspace = getattr(_thread_state, 'workspace', None)
  if workspace is None:
    workspace = _Workspace()
    _thread_state.workspace = workspace
  return workspace


def _segment_index(ids: np.ndarray, table: np.ndarray, segment_ids: np.ndarray,
                   workspace: _Workspace, name: str) -> np.ndarray:
  """uint16 [N] segment index (0 VOID, 1.. segments, _UNKNOWN otherwise) of flat ids."""
  wide = workspace.buffer(name + '_wide', ids.size, np.int64)
  np.copyto(wide, ids, casting='unsafe')  # np.take wants intp indices.
  index = workspace.buffer(name + '_index', ids.size, np.uint16)
  table[segment_ids] = np.arange(1, len(segment_ids) + 1, dtype=np.uint16)
  table[0] = 0
  try:
    np.take(table, wide, out=index)
  finally:
    table[segment_ids] = _UNKNOWN
    table[0] = _UNKNOWN
  return index


def _pixel_count_hint(data: bytes) -> int:
  """Width * height from a PNG header (0 if it is not one: the decoder reports that)."""
  if len(data) >= 24 and data[12:16] == b'IHDR':
    width, height = struct.unpack_from('>II', data, 16)
    if width * height <= panoptic_png.MAX_DEFLATE_RATIO * len(data):  # Else damaged.
      return width * height
  return 0


def _decode(data: bytes, path: str, workspace: _Workspace, name: str) -> np.ndarray:
  """Decodes into a reused buffer (fresh memory per image costs page faults)."""
  size = _pixel_count_hint(data)
  out = workspace.buffer(name, size, np.uint32) if size else None
  try:
    return panoptic_png.decode_panoptic_png(data, out=out)
  except Exception as error:
    raise ValueError(f'Cannot decode PNG {path}: {error}') from error


def _unknown_ids_error(ids: np.ndarray, known: np.ndarray, png_path: str, what: str):
  unknown = np.setdiff1d(np.unique(ids), np.concatenate([known, [0]]))
  return ValueError(f'{what} PNG {png_path} has segment id(s) {unknown[:10].tolist()} that its '
                    'JSON segments_info does not list.')


def _intersections_numpy(gt_map: np.ndarray, pred_map: np.ndarray, task: _ImageTask,
                         workspace: _Workspace) -> np.ndarray:
  """int64 [G + 1, P + 1] pixel counts per (GT, prediction) segment pair; 0 is VOID."""
  num_gt, num_pred = len(task.gt_ids), len(task.pred_ids)
  gt_index = _segment_index(gt_map.ravel(), workspace.gt_table, task.gt_ids, workspace, 'gt')
  pred_index = _segment_index(pred_map.ravel(), workspace.pred_table, task.pred_ids, workspace,
                              'pred')
  if gt_index.size and gt_index.max() == _UNKNOWN:
    raise _unknown_ids_error(gt_map, task.gt_ids, task.gt_path, 'GT')
  if pred_index.size and pred_index.max() == _UNKNOWN:
    raise _unknown_ids_error(pred_map, task.pred_ids, task.pred_path, 'Prediction')
  # Pair index = gt_index * (P + 1) + pred_index, histogrammed.
  flat = workspace.buffer('flat', gt_index.size, np.int64)
  # An int64 factor makes the product int64 (a Python int would keep uint16).
  np.multiply(gt_index, np.int64(num_pred + 1), out=flat)
  np.add(flat, pred_index, out=flat)
  return np.bincount(flat, minlength=(num_gt + 1) * (num_pred + 1)).reshape(
      num_gt + 1, num_pred + 1)


def _intersections(gt_map: np.ndarray, pred_map: np.ndarray, task: _ImageTask,
                   workspace: _Workspace) -> np.ndarray:
  """As `_intersections_numpy`, in one C pass (run-length + hash lookups) when built."""
  native = panoptic_png.native_module()
  if native is None:
    return _intersections_numpy(gt_map, pred_map, task, workspace)
  counts = np.empty((len(task.gt_ids) + 1) * (len(task.pred_ids) + 1), np.int64)
  unknown = native.pair_counts(np.ascontiguousarray(gt_map, np.uint32).ravel(),
                               np.ascontiguousarray(pred_map, np.uint32).ravel(),
                               task.gt_ids, task.pred_ids, counts)
  if unknown:  # The numpy path names the unknown ids (GT first).
    return _intersections_numpy(gt_map, pred_map, task, workspace)
  return counts.reshape(len(task.gt_ids) + 1, len(task.pred_ids) + 1)


def _fused_intersections(gt_data: bytes, pred_data: bytes,
                         task: _ImageTask) -> Optional[np.ndarray]:
  """Pair counts straight from both PNGs' inflated rows (C extension), else None.

  None (then the map-based path runs, naming any problem's file and ids) when
  the extension is off, a PNG is not plain 8-bit grey/RGB/RGBA, the sizes
  differ, the data is damaged or a map holds an unlisted id.
  """
  if panoptic_png.native_module() is None:
    return None
  gt = panoptic_png.inflate_for_native(gt_data, 'gt_rows')
  pred = panoptic_png.inflate_for_native(pred_data, 'pred_rows')
  if gt is None or pred is None or gt[1:3] != pred[1:3]:
    return None
  num_rows, num_columns = len(task.gt_ids) + 1, len(task.pred_ids) + 1
  counts = np.empty(num_rows * num_columns, np.int64)
  try:
    unknown = panoptic_png.native_module().pair_counts_png(
        gt[0], gt[3], pred[0], pred[3], gt[1], gt[2], task.gt_ids, task.pred_ids, counts)
  except ValueError:
    return None
  return None if unknown else counts.reshape(num_rows, num_columns)


def _match_task(task: _ImageTask, num_categories: int) -> panoptic_quality.ImageMatches:
  """Decodes one image pair and matches its segments."""
  gt_data = file_io.read_bytes(task.gt_path)
  pred_data = file_io.read_bytes(task.pred_path)
  intersections = _fused_intersections(gt_data, pred_data, task)
  if intersections is None:
    workspace = _workspace()
    gt_map = _decode(gt_data, task.gt_path, workspace, 'gt_ids')
    pred_map = _decode(pred_data, task.pred_path, workspace, 'pred_ids')
    if gt_map.shape != pred_map.shape:
      raise ValueError(f'GT PNG {task.gt_path} is {gt_map.shape[1]}x{gt_map.shape[0]} but '
                       f'prediction PNG {task.pred_path} is {pred_map.shape[1]}x'
                       f'{pred_map.shape[0]}.')
    intersections = _intersections(gt_map, pred_map, task, workspace)
  for areas, ids, path, what in ((intersections.sum(axis=1)[1:], task.gt_ids, task.gt_path, 'GT'),
                                 (intersections.sum(axis=0)[1:], task.pred_ids, task.pred_path,
                                  'Prediction')):
    absent = ids[areas == 0]
    if absent.size:
      raise ValueError(f'{what} JSON lists segment id(s) {absent[:10].tolist()} for {path}, but '
                       'the PNG has no pixel with them.')
  gt_area = np.where(task.gt_area >= 0, task.gt_area, intersections.sum(axis=1)[1:])
  return panoptic_quality.match_image(intersections, task.gt_category, task.gt_is_crowd, gt_area,
                                      task.pred_category, num_categories,
                                      task.crowd_segment_of_category)


def _match_batch(args: Tuple[Sequence[_ImageTask], int]) -> List[panoptic_quality.ImageMatches]:
  tasks, num_categories = args
  return [_match_task(task, num_categories) for task in tasks]


def _batches(tasks: Sequence[_ImageTask], batch_size: int):
  return [tasks[i:i + batch_size] for i in range(0, len(tasks), batch_size)]


def compute_matches(tasks: Sequence[_ImageTask], num_categories: int,
                    workers: int = 1) -> List[panoptic_quality.ImageMatches]:
  """Matches every image on `workers` threads; results in task order.

  libdeflate (through ctypes), the C extension (or Pillow's row decoder and
  the numpy steps) release the GIL, so threads scale; measured on 2 cores they beat a forked
  process pool (no start-up, no pickling, one process's lookup tables).
  """
  if workers <= 1 or len(tasks) < 2:
    return [_match_task(task, num_categories) for task in tasks]
  workers = min(workers, len(tasks))
  batch_size = max(1, min(32, len(tasks) // (4 * workers)))
  jobs = [(batch, num_categories) for batch in _batches(tasks, batch_size)]
  results = []
  with futures.ThreadPoolExecutor(max_workers=workers) as pool:
    for batch_result in pool.map(_match_batch, jobs):
      results.extend(batch_result)
  return results


def fold_matches(matches: Sequence[panoptic_quality.ImageMatches], num_categories: int,
                 num_chunks: Optional[int] = None) -> panoptic_quality.PQTotals:
  """Sums images into totals in panopticapi's order.

  panopticapi splits the image list into `multiprocessing.cpu_count()` chunks
  (`np.array_split`), sums each chunk from zero and adds the chunk sums. Doing
  the same makes the float64 IoU sums, and thus every result, bit-identical.
  """
  if num_chunks is None:
    # multiprocessing.cpu_count() is os.cpu_count() (not importing multiprocessing
    # saves CLI start-up time).
    num_chunks = os.cpu_count() or 1
  totals = panoptic_quality.PQTotals.zeros(num_categories)
  for chunk in np.array_split(np.arange(len(matches)), num_chunks):
    chunk_totals = panoptic_quality.PQTotals.zeros(num_categories)
    for index in chunk.tolist():
      panoptic_quality.add_matches(chunk_totals, matches[index])
    totals += chunk_totals
  return totals


def evaluate_panoptic_files(gt_json_file: str, pred_json_file: str,
                            gt_folder: Optional[str] = None, pred_folder: Optional[str] = None,
                            workers: Optional[int] = None,
                            num_chunks: Optional[int] = None) -> Dict[str, Any]:
  """panopticapi's `pq_compute`, fast and with input checks.

  Args:
    gt_json_file: COCO panoptic GT JSON (with "categories" incl. "isthing").
    pred_json_file: prediction JSON ("annotations" with "segments_info").
    gt_folder: GT PNG folder; default: the JSON path without ".json".
    pred_folder: prediction PNG folder; default likewise.
    workers: threads decoding PNGs; default `os.cpu_count()`.
    num_chunks: see `fold_matches` (default: panopticapi's cpu_count()).

  Returns:
    {'All'|'Things'|'Stuff': {'pq','sq','rq','n'}, 'per_class': {category_id:
    {'pq','sq','rq'}}} as panopticapi.
  """
  tasks, category_ids, is_thing = prepare_tasks(gt_json_file, pred_json_file, gt_folder,
                                                pred_folder)
  if workers is None:
    workers = os.cpu_count() or 1
  matches = compute_matches(tasks, len(category_ids), workers)
  totals = fold_matches(matches, len(category_ids), num_chunks)
  return panoptic_quality.summarize(totals, category_ids, is_thing)


def results_to_json(results: Dict[str, Any]) -> Dict[str, Any]:
  """The CLI's JSON layout: All/Things/Stuff plus per_class keyed by str(id)."""
  output = {name: {key: results[name][key] for key in ('pq', 'sq', 'rq', 'n')}
            for name in ('All', 'Things', 'Stuff')}
  output['per_class'] = {str(category_id): {key: float(value[key]) for key in ('pq', 'sq', 'rq')}
                         for category_id, value in results['per_class'].items()}
  return output


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description='Panoptic Quality of COCO-panoptic-format predictions; same inputs and '
      'numbers as panopticapi.evaluation.pq_compute.')
  parser.add_argument('--gt_json_file', required=True, help='GT JSON file.')
  parser.add_argument('--pred_json_file', required=True, help='Prediction JSON file.')
  parser.add_argument('--gt_folder', default=None,
                      help='GT PNG folder (default: gt_json_file without .json).')
  parser.add_argument('--pred_folder', default=None,
                      help='Prediction PNG folder (default: pred_json_file without .json).')
  parser.add_argument('--output_json', default=None, help='Where to write the results as JSON.')
  parser.add_argument('--overwrite', action='store_true',
                      help='Allow replacing an existing --output_json.')
  parser.add_argument('--workers', type=int, default=None,
                      help='Threads decoding PNGs (default: number of CPUs).')
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """CLI entry point; returns the process exit code."""
  args = _parse_args(argv)
  if args.workers is not None and args.workers < 1:
    print('error: --workers must be >= 1', file=sys.stderr)
    return 2
  if args.output_json and file_io.is_file(args.output_json) and not args.overwrite:
    print(f'error: --output_json {args.output_json} exists; pass --overwrite to replace it.',
          file=sys.stderr)
    return 2
  start = time.perf_counter()
  try:
    results = evaluate_panoptic_files(args.gt_json_file, args.pred_json_file, args.gt_folder,
                                      args.pred_folder, workers=args.workers)
  except ValueError as error:
    print(f'error: {error}', file=sys.stderr)
    return 1
  print('\n'.join(panoptic_quality.format_table(results)))
  print(f'Time elapsed: {time.perf_counter() - start:0.2f} seconds')
  if args.output_json:
    file_io.write_text_atomic(args.output_json, json.dumps(results_to_json(results), indent=2),
                              overwrite=True)
  return 0
