"""Benchmark: Hungarian matching and the kMaX loss, TF (graph / XLA) vs scipy.

Cost matrices shaped like the COCO loss's (181 ground-truth masks x 128 mask
slots, about 8 present masks per image, the rest absent) and dense random
181 x 181 ones, batch 8. Timed per call, median of `--runs` after a warm-up:

  scipy loop        scipy.optimize.linear_sum_assignment per batch element
                    (the baseline of the ratios; CPU only, not usable on TPU)
  tf graph          kmax_tf linear_sum_assignment in tf.function
  tf xla            the same with jit_compile=True

Then the whole loss (COCO R50 options, 6 auxiliary outputs, 17x17 outputs)
in tf.function and with the present-mask fast path vs DeepLab2's padded
square problem.

Usage: python benchmarks/losses_matching.py [--runs 5] [--batch 8]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from scipy import optimize  # noqa: E402

from kmax_tf.losses import hungarian_matching  # noqa: E402
from kmax_tf.losses import max_deeplab_loss  # noqa: E402


def _median_seconds(function, runs):
  function()
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    function()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _loss_like_cost(rng, batch):
  cost = -rng.uniform(0, 1, (batch, 181, 128)).astype(np.float32) ** 4
  present = np.zeros((batch, 181), np.float32)
  for b in range(batch):
    present[b, rng.choice(181, size=8, replace=False)] = 1.0
  return cost, present


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--runs', type=int, default=5)
  parser.add_argument('--batch', type=int, default=8)
  args = parser.parse_args()
  rng = np.random.default_rng(0)

  graph = tf.function(hungarian_matching.linear_sum_assignment)
  xla = tf.function(hungarian_matching.linear_sum_assignment, jit_compile=True)
  rows = []
  loss_cost, present = _loss_like_cost(rng, args.batch)
  padded_cost = np.full((args.batch, 181, 181), -999.0, np.float32)
  padded_cost[:, :, :128] = np.where(present[:, :, None] > 0, loss_cost, 999.0)
  dense = rng.normal(size=(args.batch, 181, 181)).astype(np.float32)
  for name, cost in (('padded loss cost 181x181', padded_cost), ('dense random 181x181', dense)):
    # (Each lambda runs before the next iteration rebinds `cost` / `tensor`.)
    scipy_time = _median_seconds(
        lambda cost=cost: [optimize.linear_sum_assignment(c) for c in cost], args.runs)
    tensor = tf.constant(cost)
    graph_time = _median_seconds(lambda tensor=tensor: graph(tensor).numpy(), args.runs)
    xla_time = _median_seconds(lambda tensor=tensor: xla(tensor).numpy(), args.runs)
    rows.append((name, scipy_time, graph_time, xla_time))

  cost_t, present_t = tf.constant(loss_cost), tf.constant(present)
  fast = tf.function(max_deeplab_loss.match_masks_to_slots)
  slow = tf.function(max_deeplab_loss.padded_square_matching)
  fast_time = _median_seconds(lambda: fast(cost_t, present_t).numpy(), args.runs)
  slow_time = _median_seconds(lambda: slow(cost_t, present_t).numpy(), args.runs)

  print(f'batch {args.batch}, median of {args.runs} runs, seconds per call')
  print(f'{"matrix":28s} {"scipy loop":>11s} {"tf graph":>9s} {"ratio":>6s} {"tf xla":>9s} '
        f'{"ratio":>6s}')
  for name, scipy_time, graph_time, xla_time in rows:
    print(f'{name:28s} {scipy_time:11.4f} {graph_time:9.4f} {graph_time / scipy_time:6.1f} '
          f'{xla_time:9.4f} {xla_time / scipy_time:6.1f}')
  print(f'loss matching, padded square (DeepLab2 problem): {slow_time:.4f} s; present-mask '
        f'fast path: {fast_time:.4f} s ({slow_time / fast_time:.1f}x faster)')


if __name__ == '__main__':
  main()
