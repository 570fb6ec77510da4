"""A command deployment: any HTTP/1.1 server on 127.0.0.1:$PORT (standard library only).

swift-serve starts one of these per replica with PORT, OMP_NUM_THREADS and the deployment's
runtime_env.env_vars set, sends it requests with the route prefix stripped (the prefix is in
X-Forwarded-Prefix), and stops it with SIGTERM.
"""
import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY: the head and the body go out in two writes, and with Nagle's algorithm the body
    # waits for the client's delayed ACK of the head, about 40 ms per request on a keep-alive
    # connection (22 req/s at one connection here, instead of about 1,100).
    disable_nagle_algorithm = True

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
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length) if length else b""
        self._answer(200, {"path": urlparse(self.path).path, "received_bytes": len(body),
                           "prefix": self.headers.get("x-forwarded-prefix", "")})

    def log_message(self, *args):
        pass


def main():
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


if __name__ == "__main__":
    main()
