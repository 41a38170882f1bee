"""An HTTP file server on 127.0.0.1 for download tests (Range requests, faults).

Serves the files of a folder. `Behaviour` switches faults on per test: a
transfer cut after some bytes (every time, or only the first time), a
transfer that stalls until released, a server that ignores Range headers. Every
request is recorded (path and Range header).
"""

import dataclasses
import http.server
import os
import re
import threading
from typing import List, Optional, Tuple

_RANGE = re.compile(r'^bytes=(\d+)-$')


@dataclasses.dataclass
class Behaviour:
  cut_after: Optional[int] = None      # Close the connection after this many body bytes...
  cut_times: Optional[int] = None      # ...on the first `cut_times` responses (None: always).
  stall_after: Optional[int] = None    # Send this many bytes, then wait for `release`.
  ignore_range: bool = False
  release: threading.Event = dataclasses.field(default_factory=threading.Event)


class LoopbackServer:
  """`with LoopbackServer(folder) as server:` serves `folder` at `server.url`."""

  def __init__(self, root):
    self.root = os.fspath(root)
    self.behaviour = Behaviour()
    self.requests: List[Tuple[str, Optional[str]]] = []
    self._cuts = 0
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = 'HTTP/1.1'

      def log_message(self, *args):  # Quiet.
        pass

      def do_GET(self):
        server._serve(self)

    self._httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self._httpd.daemon_threads = True
    self.url = f'http://127.0.0.1:{self._httpd.server_address[1]}'
    self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

  def reset(self, **behaviour) -> None:
    self.behaviour.release.set()  # Unblocks a stalled transfer of the previous test.
    self.behaviour = Behaviour(**behaviour)
    self.requests.clear()
    self._cuts = 0

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self.behaviour.release.set()
    self._httpd.shutdown()
    self._httpd.server_close()

  def _serve(self, handler) -> None:
    behaviour = self.behaviour
    range_header = handler.headers.get('Range')
    self.requests.append((handler.path, range_header))
    path = os.path.join(self.root, handler.path.lstrip('/'))
    if not os.path.isfile(path):
      handler.send_error(404)
      return
    with open(path, 'rb') as f:
      data = f.read()
    start = 0
    match = _RANGE.match(range_header or '')
    if match and not behaviour.ignore_range:
      start = int(match.group(1))
      if start >= len(data):
        handler.send_response(416)
        handler.send_header('Content-Range', f'bytes */{len(data)}')
        handler.send_header('Content-Length', '0')
        handler.end_headers()
        return
      handler.send_response(206)
      handler.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
    else:
      handler.send_response(200)
    body = data[start:]
    handler.send_header('Content-Length', str(len(body)))
    handler.send_header('Accept-Ranges', 'bytes')
    handler.end_headers()
    cut = behaviour.cut_after
    if cut is not None and (behaviour.cut_times is None or self._cuts < behaviour.cut_times):
      self._cuts += 1
      handler.wfile.write(body[:cut])
      handler.wfile.flush()
      handler.close_connection = True
      return
    if behaviour.stall_after is not None:
      handler.wfile.write(body[:behaviour.stall_after])
      handler.wfile.flush()
      behaviour.release.wait(60)
      handler.close_connection = True
      return
    handler.wfile.write(body)
