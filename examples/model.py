"""A command deployment: any HTTP/1.1 server on 127.0.0.1:$PORT (standard library only).

swift-serve starts one of these per replica with PORT, OMP_NUM_THREADS and the deployment's
runtime_env.env_vars set, sends it requests with the route prefix stripped (the prefix is in
X-Forwarded-Prefix), and stops it with SIGTERM.

What the server needs, and this one shows (README, "Process replicas"):
- HTTP/1.1 keep-alive: the worker reuses connections, one request at a time on each.
- TCP_NODELAY on accepted connections: with Nagle's algorithm on, a response written in two
  pieces (head, then body) waits for the client's delayed ACK, about 40 ms per request.
- A listen backlog of hundreds: the worker opens a connection per concurrent request, and a
  burst of them past a small backlog (Python's default is 5) is refused or delayed.
- Request bodies with Content-Length or chunked (a body whose length the client did not say
  arrives chunked); requests without a body come without either.
"""
import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY on each accepted connection (socketserver.StreamRequestHandler.setup).
    disable_nagle_algorithm = True

    def _body(self):
        """The request body, framed by Content-Length or the chunked coding (RFC 9112 §6)."""
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailer fields, if any
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("content-length", "0") or "0")
        return self.rfile.read(length) if length else b""

    def _answer(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/healthz":
            return self._answer(200, {"ok": True})
        x = float(parse_qs(url.query).get("x", ["0"])[0])
        self._answer(200, {
            "model": os.environ.get("MODEL", ""),
            "path": url.path,
            "prefix": self.headers.get("x-forwarded-prefix", ""),
            "prediction": 2 * x + 1,
            "pid": os.getpid(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", ""),
        })

    def do_POST(self):
        body = self._body()
        self._answer(200, {"path": urlparse(self.path).path, "received_bytes": len(body),
                           "prefix": self.headers.get("x-forwarded-prefix", "")})

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    # listen(2) backlog: bursts of new connections wait in the kernel instead of being refused.
    request_queue_size = 1024
    daemon_threads = True


def main():
    server = Server(("127.0.0.1", int(os.environ["PORT"])), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


if __name__ == "__main__":
    main()
