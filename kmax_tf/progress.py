"""Console progress, one printer for converters, training and prediction.

* `ProgressBar`: items done out of a total, rate and ETA, on stderr. On a
  terminal it redraws one line in place; in a log it prints a line every 10 %.
  Used by the dataset converters and `kmax_tf.predict`.
* `ProgressPrinter`: an orbit train action, one line per train loop (step,
  loss, learning rate, steps/s, ETA). Used by the trainer.

Both format rate and ETA the same way (`format_duration`).
"""

import sys
import time
from typing import Iterable, Iterator, Mapping, Optional, TextIO, TypeVar

import numpy as np

from kmax_tf import common

TOTAL_LOSS_LOG_KEY = 'losses/train_' + common.TOTAL_LOSS
_Item = TypeVar('_Item')


def format_duration(seconds: float) -> str:
  """'H:MM:SS', or '?' for an unknown (infinite / NaN) duration."""
  if not np.isfinite(seconds):
    return '?'
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f'{hours:d}:{minutes:02d}:{seconds:02d}'


def _eta(done: float, total: float, rate: float) -> str:
  return format_duration((total - done) / rate if rate > 0 else float('inf'))


class ProgressBar:
  """A dependency-free progress bar: `update()` per item, `close()` at the end."""

  def __init__(self, total: int, description: str, stream: Optional[TextIO] = None,
               enabled: bool = True, unit: str = 'img'):
    self._total = max(total, 0)
    self._description = description
    self._stream = stream if stream is not None else sys.stderr
    self._enabled = enabled
    self._unit = unit
    self._count = 0
    self._start = time.monotonic()
    self._last_draw = -1.0
    self._last_decile = -1
    self._is_tty = hasattr(self._stream, 'isatty') and self._stream.isatty()

  def update(self, count: int = 1):
    self._count += count
    now = time.monotonic()
    if self._is_tty:
      if now - self._last_draw >= 0.2 or self._count >= self._total:
        self._last_draw = now
        self._draw(end='\r')
    else:
      # Logs get a line every 10 %.
      decile = int(10 * self._count / self._total) if self._total else 10
      if decile != self._last_decile:
        self._last_decile = decile
        self._draw(end='\n')

  def write(self, message: str):
    """Prints a message on its own line without breaking the bar."""
    if self._enabled and self._is_tty:
      self._stream.write('\r\033[K')
    self._stream.write(message + '\n')
    if self._enabled and self._is_tty and 0 < self._count < self._total:
      self._draw(end='\r')
    self._stream.flush()

  def iterate(self, items: Iterable[_Item]) -> Iterator[_Item]:
    """Yields `items`, counting each one after the caller has handled it."""
    try:
      for item in items:
        yield item
        self.update()
    finally:
      self.close()

  def _draw(self, end: str):
    if not self._enabled:
      return
    elapsed = time.monotonic() - self._start
    rate = self._count / elapsed if elapsed > 0 else 0.0
    fraction = self._count / self._total if self._total else 1.0
    width = 30
    filled = int(round(width * fraction))
    bar = '#' * filled + '.' * (width - filled)
    self._stream.write(f'{self._description} [{bar}] {self._count}/{self._total} '
                       f'({100 * fraction:5.1f}%) {rate:6.1f} {self._unit}/s '
                       f'ETA {_eta(self._count, self._total, rate)}{end}')
    self._stream.flush()

  def close(self):
    if self._enabled and self._is_tty:
      self._draw(end='\n')
      self._is_tty = False  # Closed: nothing more is drawn in place.


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
    loss = train_output.get(TOTAL_LOSS_LOG_KEY)
    loss_text = f'{float(np.asarray(loss)):.4f}' if loss is not None else '?'
    learning_rate = train_output.get('learning_rate')
    lr_text = f' | lr {float(np.asarray(learning_rate)):.3g}' if learning_rate is not None else ''
    self._stream.write(f'step {step}/{self._total_steps} | loss {loss_text}{lr_text} | '
                       f'{rate:.2f} steps/s | ETA {_eta(step, self._total_steps, rate)}\n')
    self._stream.flush()
    self._last_step, self._last_time = step, now
