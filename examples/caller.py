"""A process replica that calls another deployment through its node's handle listener.

Every process replica gets SERVE_HANDLE_URL (its node's listener, on loopback) and
SERVE_HANDLE_TOKEN. `METHOD $SERVE_HANDLE_URL/APP/DEPLOYMENT/PATH` with the header
`serve-handle-token: $SERVE_HANDLE_TOKEN` reaches a replica of that deployment, which sees
`/PATH`: through the node's router (replicas on this node first), counted as that deployment's
load, waiting through its cold start. Without the token: 401; an unknown target: 404; otherwise
the ingress's answers (503 over its queue limit, 504 past request_timeout_s).

This one answers GET /ask?q=... by asking the deployment CALLEE_DEPLOYMENT of application
CALLEE_APP (env_vars in the config) and wrapping its answer. Standard library only.
"""
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, urlparse

HANDLE_URL = os.environ.get("SERVE_HANDLE_URL", "")
HANDLE_TOKEN = os.environ.get("SERVE_HANDLE_TOKEN", "")


def call(app, deployment, path, body=None):
    """One handle call: (status, content type, body bytes)."""
    url = f"{HANDLE_URL}/{quote(app)}/{quote(deployment)}{path}"
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                     headers={"serve-handle-token": HANDLE_TOKEN})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers.get("content-type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("content-type", ""), error.read()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
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
        app = os.environ.get("CALLEE_APP", "")
        deployment = os.environ.get("CALLEE_DEPLOYMENT", "")
        status, kind, body = call(app, deployment, self.path)
        answer = json.loads(body) if kind.startswith("application/json") else body.decode(errors="replace")
        self._answer(200 if status < 300 else 502, {
            "asked": f"{app}/{deployment}",
            "status": status,
            "answer": answer,
            "by": "caller.py",
        })

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True


def main():
    server = Server(("127.0.0.1", int(os.environ["PORT"])), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


if __name__ == "__main__":
    main()
