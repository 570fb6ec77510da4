"""A process replica that streams its answer as server-sent events, one token at a time.

GET /?n=10&ms=100&prompt=hi answers `text/event-stream` with the chunked coding: each event is
written and flushed as it is made, and every proxy on the way passes it on at once (none
buffers a response whose length it does not know). A client that goes away closes the
connection: the next write fails and the generation stops. Standard library only.
"""
import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def _chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self):
        url = urlparse(self.path)
        query = parse_qs(url.query)
        if url.path == "/healthz":
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        count = int(query.get("n", ["10"])[0])
        pause = float(query.get("ms", ["100"])[0]) / 1000
        prompt = query.get("prompt", ["hello"])[0]
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        try:
            for index in range(count):
                if index:
                    time.sleep(pause)
                token = json.dumps({"index": index, "token": f"{prompt}-{index}", "by": "tokens.py"})
                self._chunk(f"event: token\nid: {index}\ndata: {token}\n\n".encode())
            self._chunk(b"event: done\ndata: [DONE]\n\n")
            self._chunk(b"")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

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
