"""Benchmark: PQ of COCO-panoptic files, ours vs panopticapi vs hotcoco.

Generates a deterministic synthetic set (default 500 GT/prediction pairs of
640x480, with crowd, VOID, missed/split/merged/spurious segments; optional
pixel noise) in a temp folder, then times on this machine:

* ours, in-process: `coco_panoptic_evaluation.evaluate_panoptic_files` (what
  the CLI runs after parsing its flags), with --workers threads, using the C
  extension `_pqfast` when it is built;
* ours, CLI: `python evaluation/panoptic_quality.py ...` as a subprocess
  (adds interpreter start-up and imports);
* ours without the C extension (KMAX_DISABLE_PQFAST=1; PNGs read by
  `PIL.Image.open`, counting in numpy), in-process;
* panopticapi's `pq_compute` (in-process; it forks cpu_count() workers);
* `hotcoco.panoptic.pq_compute` (Rust), in-process (the baseline of the
  ratios) and in a `python -c` subprocess (interpreter start-up included, as
  for our CLI).

Each is run `--repeats` times (interleaved); the table gives the median wall
time and CPU time (this process and its children: a fair comparison when other
jobs share the cores) and their ratios to hotcoco. The numbers must agree
(ours with and without the extension and panopticapi bit-identical, hotcoco
to 1e-9), or the script fails.

Usage: python benchmarks/pq_eval.py [--num_images=500] [--repeats=3]
  [--pixel_noise=0.02] [--data_dir=/tmp/pq_bench_data]
"""

import argparse
import contextlib
import io
import multiprocessing.pool
import os
import statistics
import subprocess
import sys
import tempfile
import time

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO_ROOT)

from kmax_tf.evaluation import coco_panoptic_evaluation  # noqa: E402
from kmax_tf.evaluation import panoptic_png  # noqa: E402
from tests.helpers import synthetic_panoptic  # noqa: E402


def _max_difference(ours, reference):
  differences = []
  for group in ('All', 'Things', 'Stuff'):
    for metric in ('pq', 'sq', 'rq', 'n'):
      differences.append(abs(float(ours[group][metric]) - float(reference[group][metric])))
  for category_id, values in reference['per_class'].items():
    mine = ours['per_class'][int(category_id)]
    for metric in ('pq', 'sq', 'rq'):
      differences.append(abs(float(mine[metric]) - float(values[metric])))
  return max(differences)


def _cpu_seconds():
  """User + system CPU of this process and its finished children."""
  t = os.times()
  return t.user + t.system + t.children_user + t.children_system


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--num_images', type=int, default=500)
  parser.add_argument('--height', type=int, default=480)
  parser.add_argument('--width', type=int, default=640)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--workers', type=int, default=os.cpu_count() or 1)
  parser.add_argument('--pixel_noise', type=float, default=0.0,
                      help='Fraction of noisy prediction pixels (0: clean maps like real '
                      'annotations and model outputs; 0.02: the tests\' noisy cases).')
  parser.add_argument('--data_dir', default=None,
                      help='Keep the generated set in this folder (one subfolder per set '
                      'parameters) and reuse it in later runs; default: a temporary folder.')
  args = parser.parse_args()

  from hotcoco import panoptic as hotcoco_panoptic
  from panopticapi import evaluation as panopticapi_evaluation
  pq_compute = panopticapi_evaluation.pq_compute

  with contextlib.ExitStack() as stack:
    if args.data_dir:
      root = os.path.join(args.data_dir, f'n{args.num_images}_{args.width}x{args.height}_'
                          f'noise{args.pixel_noise}_seed2024')
    else:
      root = stack.enter_context(tempfile.TemporaryDirectory(prefix='pq_eval_bench_'))
    start = time.perf_counter()
    complete_marker = os.path.join(root, 'complete')
    if os.path.exists(complete_marker):
      gt_json, gt_folder, pred_json, pred_folder = (
          os.path.join(root, name) for name in ('gt.json', 'gt', 'pred.json', 'pred'))
    else:
      os.makedirs(root, exist_ok=True)
      gt_json, gt_folder, pred_json, pred_folder = synthetic_panoptic.write_case(
          root, args.num_images, args.height, args.width, seed=2024,
          pixel_noise=args.pixel_noise)
      open(complete_marker, 'w').close()
    print(f'Generated {args.num_images} pairs of {args.width}x{args.height} '
          f'(pixel_noise {args.pixel_noise}) in '
          f'{time.perf_counter() - start:.1f} s (fast PNG path: '
          f'{panoptic_png.fast_decoding_available()}; C extension: '
          f'{panoptic_png.native_module() is not None}; {os.cpu_count()} CPUs).')

    def ours():
      return coco_panoptic_evaluation.evaluate_panoptic_files(
          gt_json, pred_json, gt_folder, pred_folder, workers=args.workers)

    def ours_cli():
      subprocess.run(
          [sys.executable, os.path.join(_REPO_ROOT, 'evaluation', 'panoptic_quality.py'),
           f'--gt_json_file={gt_json}', f'--pred_json_file={pred_json}',
           f'--gt_folder={gt_folder}', f'--pred_folder={pred_folder}',
           f'--workers={args.workers}'], check=True, capture_output=True, cwd=_REPO_ROOT)

    def ours_fallback():
      previous = os.environ.get('KMAX_DISABLE_PQFAST')
      os.environ['KMAX_DISABLE_PQFAST'] = '1'
      try:
        return ours()
      finally:
        if previous is None:
          del os.environ['KMAX_DISABLE_PQFAST']
        else:
          os.environ['KMAX_DISABLE_PQFAST'] = previous

    def panopticapi():
      # pq_compute never closes its multiprocessing.Pool, so its workers would
      # be reaped (and their CPU time counted) during a later run: record the
      # pools and shut them down here.
      pools = []

      class ClosingPool(multiprocessing.pool.Pool):

        def __init__(self, *pool_args, **pool_kwargs):
          super().__init__(*pool_args, **pool_kwargs)
          pools.append(self)

      original_pool = panopticapi_evaluation.multiprocessing.Pool
      panopticapi_evaluation.multiprocessing.Pool = ClosingPool
      try:
        with contextlib.redirect_stdout(io.StringIO()):
          return pq_compute(gt_json, pred_json, gt_folder, pred_folder)
      finally:
        panopticapi_evaluation.multiprocessing.Pool = original_pool
        for pool in pools:
          pool.close()
          pool.join()

    def hotcoco():
      with contextlib.redirect_stdout(io.StringIO()):
        return hotcoco_panoptic.pq_compute(gt_json, pred_json, gt_folder, pred_folder)

    def hotcoco_subprocess():
      subprocess.run(
          [sys.executable, '-c', 'import sys; from hotcoco import panoptic; '
           'panoptic.pq_compute(*sys.argv[1:])', gt_json, pred_json, gt_folder, pred_folder],
          check=True, capture_output=True)

    runs = {'ours (in-process)': ours, 'ours (CLI subprocess)': ours_cli,
            'ours without C extension (in-process)': ours_fallback,
            'panopticapi pq_compute': panopticapi,
            'hotcoco (python -c subprocess)': hotcoco_subprocess,
            'hotcoco PanopticEval': hotcoco}
    load_before = os.getloadavg()
    times = {name: [] for name in runs}
    cpu = {name: [] for name in runs}
    results = {}
    for _ in range(args.repeats):
      for name, run in runs.items():
        start, start_cpu = time.perf_counter(), _cpu_seconds()
        results[name] = run()
        times[name].append(time.perf_counter() - start)
        cpu[name].append(_cpu_seconds() - start_cpu)

    ours_result = results['ours (in-process)']
    assert ours_result == results['ours without C extension (in-process)'], (
        'the C extension changed the results')
    exact = _max_difference(ours_result, results['panopticapi pq_compute'])
    versus_hotcoco = _max_difference(ours_result, results['hotcoco PanopticEval'])
    assert exact <= 1e-9, f'differs from panopticapi by {exact}'
    assert versus_hotcoco <= 1e-9, f'differs from hotcoco by {versus_hotcoco}'

    baseline = statistics.median(times['hotcoco PanopticEval'])
    print(f'\nPQ {ours_result["All"]["pq"]:.6f}; max |ours - panopticapi| = {exact:.1e}, '
          f'max |ours - hotcoco| = {versus_hotcoco:.1e}')
    cpu_baseline = statistics.median(cpu['hotcoco PanopticEval'])
    print(f'Load average before/after: {load_before} / {os.getloadavg()}')
    print(f'\n| method | median wall s ({args.repeats} runs) | runs | wall vs hotcoco '
          '| median CPU s | CPU vs hotcoco |')
    print('|---|---|---|---|---|---|')
    for name in runs:
      median = statistics.median(times[name])
      spread = ', '.join(f'{t:.2f}' for t in times[name])
      cpu_median = statistics.median(cpu[name])
      print(f'| {name} | {median:.3f} | {spread} | {median / baseline:.2f}x | {cpu_median:.2f} '
            f'| {cpu_median / cpu_baseline:.2f}x |')


if __name__ == '__main__':
  main()
