"""Two MultiWorkerMirroredStrategy workers on 127.0.0.1: preempt one, restart, resume."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
STEPS = 40


def _free_ports(count):
  sockets = []
  for _ in range(count):
    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    sockets.append(sock)
  ports = [sock.getsockname()[1] for sock in sockets]
  for sock in sockets:
    sock.close()
  return ports


def _checkpoint_steps(model_dir):
  return sorted(int(p.name[5:-6]) for p in pathlib.Path(model_dir).glob('ckpt-*.index'))


def _start_workers(model_dir, log_dir, attempt):
  addresses = [f'127.0.0.1:{port}' for port in _free_ports(2)]
  processes = []
  for index in range(2):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=str(REPO),
               TF_CONFIG=json.dumps({'cluster': {'worker': addresses},
                                     'task': {'type': 'worker', 'index': index}}))
    log = open(log_dir / f'worker{index}_attempt{attempt}.log', 'w')
    processes.append(subprocess.Popen(
        [sys.executable, '-m', 'tests.training.standin_run', str(model_dir), str(STEPS),
         '--strategy=multi_worker_mirrored', '--sleep_per_loop=0.3'],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
  return processes


def _wait(processes, timeout):
  deadline = time.time() + timeout
  for process in processes:
    try:
      process.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      for other in processes:
        other.kill()
      raise
  return [process.returncode for process in processes]


@pytest.mark.slow
@pytest.mark.parametrize('kill_signal', [signal.SIGTERM, signal.SIGKILL])
def test_killed_worker_job_resumes_from_checkpoint(tmp_path, kill_signal):
  """SIGTERM: PreemptionCheckpointHandler saves at an agreed step, both exit 42.
  SIGKILL: the peer fails (or is stopped, as a cluster manager would); the job
  resumes from the last periodic checkpoint."""
  model_dir = tmp_path / 'model'
  processes = _start_workers(model_dir, tmp_path, attempt=0)
  try:
    deadline = time.time() + 240
    while not _checkpoint_steps(model_dir) or max(_checkpoint_steps(model_dir)) < 6:
      assert time.time() < deadline, 'no checkpoint in time'
      assert all(p.poll() is None for p in processes), (tmp_path / 'worker0_attempt0.log'
                                                        ).read_text()[-3000:]
      time.sleep(0.1)
    processes[1].send_signal(kill_signal)
    if kill_signal == signal.SIGTERM:
      codes = _wait(processes, 180)
    else:
      processes[1].wait(timeout=60)
      try:  # The survivor notices the dead peer and fails; stop it if it is still waiting.
        processes[0].wait(timeout=90)
      except subprocess.TimeoutExpired:
        processes[0].kill()
        processes[0].wait(timeout=30)
      codes = [p.returncode for p in processes]
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  logs = (tmp_path / 'worker0_attempt0.log').read_text()
  if kill_signal == signal.SIGTERM:
    assert codes == [42, 42], logs[-3000:]  # Both saved and exited with the restart code.
  else:
    assert codes[1] == -signal.SIGKILL and codes[0] != 0, logs[-3000:]
  saved = max(_checkpoint_steps(model_dir))
  assert 6 <= saved < STEPS

  processes = _start_workers(model_dir, tmp_path, attempt=1)
  codes = _wait(processes, 300)
  logs = (tmp_path / 'worker0_attempt1.log').read_text()
  assert codes == [0, 0], logs[-3000:]
  assert f'restored from checkpoint: {model_dir}/ckpt-{saved}' in logs
  assert f'step {saved + 2}/{STEPS}' in logs
  assert max(_checkpoint_steps(model_dir)) == STEPS
