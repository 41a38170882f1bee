"""Minimum-cost bipartite matching (linear sum assignment) in pure TensorFlow.

The solver is the shortest-augmenting-path method that scipy's
`linear_sum_assignment` also uses (Crouse 2016 / Jonker-Volgenant style): rows
are added one at a time, each by a Dijkstra search over reduced costs that keeps
row and column potentials dual-feasible, so every intermediate matching is
optimal for the rows it covers.

Written for accelerators: static shapes, `tf.while_loop` only, no host
callbacks; it runs batched in lockstep (each loop step costs O(B * C)) and
compiles with `tf.function(jit_compile=True)`. Only the rows that must be
matched are processed, and all columns tied at the current shortest distance
are finalised together (Dijkstra allows it: tied minima are all final), which
keeps integer or padded costs from degenerating into one column per step.

Orientation follows DeepLab2's matcher: `cost[b, i, j]` is the cost of matching
row i (a ground-truth mask in the loss) to column j (a predicted mask slot), and
the returned matrix is indexed the same way.
"""

from typing import Optional

import tensorflow as tf


def _solve_row_by_row(cost: tf.Tensor, active_rows: tf.Tensor) -> tf.Tensor:
  """Matches every active row to a distinct column at minimum total cost.

  Args:
    cost: float [B, R, C], finite (or +inf for forbidden pairs).
    active_rows: bool [B, R], the rows that must be matched; at most C per
      batch element, with a finite-cost matching of all of them.

  Returns:
    col_for_row: int32 [B, R], the matched column of each row, -1 for inactive
      rows.
  """
  dtype = cost.dtype
  num_rows, num_cols = cost.shape[1], cost.shape[2]
  # Static when known, so that loop variables keep one shape.
  batch_size = cost.shape[0] if cost.shape[0] is not None else tf.shape(cost)[0]
  inf = tf.constant(float('inf'), dtype)
  row_ids = tf.range(num_rows, dtype=tf.int32)[tf.newaxis, :]
  col_ids = tf.range(num_cols, dtype=tf.int32)[tf.newaxis, :]
  # Rows are added in increasing order, active rows only.
  row_order = tf.argsort(tf.cast(~active_rows, tf.int32), axis=1, stable=True)
  num_active = tf.reduce_sum(tf.cast(active_rows, tf.int32), axis=1)

  def dijkstra(cur_row, started, row_potential, col_potential, row_for_col, col_for_row):
    """Shortest augmenting path from `cur_row` [B] for the started elements.

    Each step either relaxes the edges of one reached row, or, when no reached
    row is pending, finalises all unscanned columns at the smallest distance:
    it stops at a free one (the sink) or queues the rows matched to them.
    """
    init = dict(
        dist=tf.fill([batch_size, num_cols], inf),
        path=tf.fill([batch_size, num_cols], -1),
        rows_seen=tf.zeros([batch_size, num_rows], tf.bool),
        cols_done=tf.zeros([batch_size, num_cols], tf.bool),
        pending=tf.equal(row_ids, cur_row[:, tf.newaxis]) & started[:, tf.newaxis],
        min_dist=tf.zeros([batch_size], dtype),
        sink=tf.fill([batch_size], -1),
        running=started)

    def step(s):
      running = s['running']
      has_pending = tf.reduce_any(s['pending'], axis=1)
      relaxing = running & has_pending
      selecting = running & ~has_pending

      # Relax the first pending row.
      row = tf.argmax(tf.cast(s['pending'], tf.int32), axis=1, output_type=tf.int32)
      row_hit = tf.equal(row_ids, row[:, tf.newaxis]) & relaxing[:, tf.newaxis]
      reduced = (tf.gather(cost, row, axis=1, batch_dims=1) -
                 tf.gather(row_potential, row, axis=1, batch_dims=1)[:, tf.newaxis])
      candidate = s['min_dist'][:, tf.newaxis] + reduced - col_potential
      improve = relaxing[:, tf.newaxis] & ~s['cols_done'] & (candidate < s['dist'])
      dist = tf.where(improve, candidate, s['dist'])
      path = tf.where(improve, row[:, tf.newaxis], s['path'])

      # Or finalise the columns at the smallest distance.
      open_dist = tf.where(s['cols_done'], inf, dist)
      lowest = tf.reduce_min(open_dist, axis=1)
      tied = (~s['cols_done'] & tf.equal(open_dist, lowest[:, tf.newaxis]) &
              selecting[:, tf.newaxis])
      free_tied = tied & (row_for_col < 0)
      found = tf.reduce_any(free_tied, axis=1)
      sink_col = tf.argmax(tf.cast(free_tied, tf.int32), axis=1, output_type=tf.int32)
      sink_hit = tf.equal(col_ids, sink_col[:, tf.newaxis])
      newly_done = tf.where(found[:, tf.newaxis], sink_hit, tied) & selecting[:, tf.newaxis]
      # Rows matched to the finalised columns are reached at distance `lowest`.
      reached = tf.gather(tied, tf.maximum(col_for_row, 0), batch_dims=1) & (col_for_row >= 0)
      pending = (s['pending'] & ~row_hit) | (reached & ~found[:, tf.newaxis])
      return dict(
          dist=dist, path=path,
          rows_seen=s['rows_seen'] | row_hit,
          cols_done=s['cols_done'] | newly_done,
          pending=pending,
          min_dist=tf.where(selecting, lowest, s['min_dist']),
          sink=tf.where(selecting & found, sink_col, s['sink']),
          running=running & ~(selecting & found))

    return tf.while_loop(lambda s: tf.reduce_any(s['running']), lambda s: (step(s),),
                         (init,), maximum_iterations=num_rows + 2 * num_cols + 2)[0]

  def add_row(step_index, row_potential, col_potential, row_for_col, col_for_row):
    started = step_index < num_active
    cur_row = tf.gather(row_order, tf.minimum(step_index, num_rows - 1), axis=1)
    s = dijkstra(cur_row, started, row_potential, col_potential, row_for_col, col_for_row)
    min_dist = s['min_dist'][:, tf.newaxis]
    started_2d = started[:, tf.newaxis]

    # Dual update keeps reduced costs >= 0 and tight on the matching.
    dist_of_own_col = tf.gather(s['dist'], tf.maximum(col_for_row, 0), batch_dims=1)
    is_cur = tf.equal(row_ids, cur_row[:, tf.newaxis])
    zero_rows, zero_cols = tf.zeros_like(row_potential), tf.zeros_like(col_potential)
    row_delta = tf.where(is_cur, min_dist,
                         tf.where(s['rows_seen'], min_dist - dist_of_own_col, zero_rows))
    row_potential += tf.where(started_2d, row_delta, zero_rows)
    col_delta = tf.where(s['cols_done'], min_dist - s['dist'], zero_cols)
    col_potential -= tf.where(started_2d, col_delta, zero_cols)

    # Flip the matching along the path, from the sink back to `cur_row`.
    def flip(col, going, row_for_col, col_for_row):
      row = tf.maximum(tf.gather(s['path'], tf.maximum(col, 0), batch_dims=1), 0)
      col_hit = tf.equal(col_ids, col[:, tf.newaxis]) & going[:, tf.newaxis]
      row_for_col = tf.where(col_hit, row[:, tf.newaxis], row_for_col)
      previous_col = tf.gather(col_for_row, row, batch_dims=1)
      row_hit = tf.equal(row_ids, row[:, tf.newaxis]) & going[:, tf.newaxis]
      col_for_row = tf.where(row_hit, col[:, tf.newaxis], col_for_row)
      going = going & tf.not_equal(row, cur_row)
      return previous_col, going, row_for_col, col_for_row

    _, _, row_for_col, col_for_row = tf.while_loop(
        lambda col, going, *_: tf.reduce_any(going), flip,
        (s['sink'], started, row_for_col, col_for_row),
        maximum_iterations=num_rows + 1)
    return step_index + 1, row_potential, col_potential, row_for_col, col_for_row

  loop_vars = (tf.constant(0, tf.int32),
               tf.zeros([batch_size, num_rows], dtype),
               tf.zeros([batch_size, num_cols], dtype),
               tf.fill([batch_size, num_cols], -1),
               tf.fill([batch_size, num_rows], -1))
  max_active = tf.reduce_max(tf.concat([num_active, [0]], axis=0))
  result = tf.while_loop(lambda step_index, *_: step_index < max_active, add_row, loop_vars,
                         maximum_iterations=num_rows)
  return result[4]


def linear_sum_assignment(cost: tf.Tensor,
                          active_rows: Optional[tf.Tensor] = None) -> tf.Tensor:
  """Batched minimum-cost assignment, like `scipy.optimize.linear_sum_assignment`.

  Without `active_rows`, min(R, C) pairs are matched: every row if R <= C,
  every column otherwise. With `active_rows`, exactly the active rows are
  matched (their count must not exceed C); inactive rows stay unmatched.

  Args:
    cost: float32/float64 [B, R, C] with static R and C. Entries may be +inf
      (forbidden pair) as long as a finite-cost assignment exists.
    active_rows: optional bool [B, R].

  Returns:
    col_for_row: int32 [B, R], the column matched to each row, -1 if none.
  """
  cost = tf.convert_to_tensor(cost)
  if cost.shape.rank != 3 or cost.shape[1] is None or cost.shape[2] is None:
    raise ValueError(f'cost must be [batch, rows, cols] with static rows/cols, '
                     f'got shape {cost.shape}.')
  if not cost.dtype.is_floating:
    cost = tf.cast(cost, tf.float32)
  num_rows, num_cols = cost.shape[1], cost.shape[2]
  if active_rows is not None:
    return _solve_row_by_row(cost, tf.cast(active_rows, tf.bool))
  if num_rows <= num_cols:
    return _solve_row_by_row(cost, tf.ones(tf.shape(cost)[:2], tf.bool))
  # More rows than columns: match every column instead, then invert.
  row_for_col = _solve_row_by_row(tf.transpose(cost, [0, 2, 1]),
                                  tf.ones([tf.shape(cost)[0], num_cols], tf.bool))
  hits = tf.equal(row_for_col[:, :, tf.newaxis], tf.range(num_rows)[tf.newaxis, tf.newaxis])
  return tf.where(tf.reduce_any(hits, axis=1),
                  tf.argmax(tf.cast(hits, tf.int32), axis=1, output_type=tf.int32), -1)


def assignment_matrix(col_for_row: tf.Tensor, num_cols: int) -> tf.Tensor:
  """Turns `col_for_row` int32 [B, R] (-1 = unmatched) into bool [B, R, num_cols]."""
  return tf.one_hot(col_for_row, num_cols, on_value=True, off_value=False, dtype=tf.bool)


def hungarian_matching(cost: tf.Tensor) -> tf.Tensor:
  """Minimum-cost assignment as a boolean matrix, DeepLab2's matcher interface.

  Args:
    cost: float [B, R, C]; for a square cost this is a full permutation.

  Returns:
    bool [B, R, C], True where row i is matched to column j; min(R, C) pairs.
  """
  return assignment_matrix(linear_sum_assignment(cost), cost.shape[2])


def complete_to_permutation(col_for_row: tf.Tensor, size: int) -> tf.Tensor:
  """Extends a partial matching to a full permutation of `size` rows and columns.

  Unmatched rows (including rows R..size-1) take the unused columns in
  increasing order; matched pairs are kept.

  Args:
    col_for_row: int32 [B, R], R <= size, -1 = unmatched; columns < size.
    size: number of rows and columns of the permutation.

  Returns:
    int32 [B, size], a permutation of range(size) per batch element.
  """
  num_rows = col_for_row.shape[1]
  col_for_row = tf.pad(col_for_row, [[0, 0], [0, size - num_rows]], constant_values=-1)
  col_used = tf.reduce_any(assignment_matrix(col_for_row, size), axis=1)
  row_free = col_for_row < 0
  # k-th free row (in order) takes the k-th unused column.
  row_rank = tf.cumsum(tf.cast(row_free, tf.int32), axis=1) - 1
  col_rank = tf.cumsum(tf.cast(~col_used, tf.int32), axis=1) - 1
  pairs = (~col_used)[:, tf.newaxis, :] & tf.equal(row_rank[:, :, tf.newaxis],
                                                   col_rank[:, tf.newaxis, :])
  fill = tf.argmax(tf.cast(pairs, tf.int32), axis=2, output_type=tf.int32)
  return tf.where(row_free, fill, col_for_row)
