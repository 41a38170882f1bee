"""Console progress for training: step, loss, steps/s and ETA after every train loop."""

import sys
import time
from typing import Mapping, Optional, TextIO

import numpy as np

from kmax_tf import common

TOTAL_LOSS_LOG_KEY = 'losses/train_' + common.TOTAL_LOSS


def format_duration(seconds: float) -> str:
  if not np.isfinite(seconds):
    return '?'
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f'{hours:d}:{minutes:02d}:{seconds:02d}'


class ProgressPrinter:
  """An orbit train action printing one line per train loop.

  `step_fn` returns the current global step (an int); the rate is measured
  between calls, so time spent evaluating or checkpointing is excluded when
  `restart()` is called after it.
  """

  def __init__(self, step_fn, total_steps: int, stream: Optional[TextIO] = None):
    self._step_fn = step_fn
    self._total_steps = total_steps
    self._stream = stream or sys.stdout
    self.restart()

  def restart(self):
    self._last_step = int(self._step_fn())
    self._last_time = time.monotonic()

  def __call__(self, train_output: Mapping[str, object]):
    step = int(self._step_fn())
    now = time.monotonic()
    elapsed = max(now - self._last_time, 1e-9)
    rate = (step - self._last_step) / elapsed
    eta = (self._total_steps - step) / rate if rate > 0 else float('inf')
    loss = train_output.get(TOTAL_LOSS_LOG_KEY)
    loss_text = f'{float(np.asarray(loss)):.4f}' if loss is not None else '?'
    learning_rate = train_output.get('learning_rate')
    lr_text = f' | lr {float(np.asarray(learning_rate)):.3g}' if learning_rate is not None else ''
    self._stream.write(f'step {step}/{self._total_steps} | loss {loss_text}{lr_text} | '
                       f'{rate:.2f} steps/s | ETA {format_duration(eta)}\n')
    self._stream.flush()
    self._last_step, self._last_time = step, now
