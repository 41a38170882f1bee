"""Regenerates kmax_tf/protos/*_pb2.py from protos/*.proto.

Run from anywhere: `python protos/generate.py` (needs grpcio-tools, a test
extra). The generated modules are checked in so that users need no protoc;
tests/test_protos.py fails when they are stale.
"""

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def main() -> None:
  protos = sorted(str(p) for p in (REPO / 'protos').glob('*.proto'))
  subprocess.run([sys.executable, '-m', 'grpc_tools.protoc', f'-Ikmax_tf/protos={REPO / "protos"}',
                  f'--python_out={REPO}'] + protos, check=True)


if __name__ == '__main__':
  main()
