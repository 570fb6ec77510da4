"""A command deployment that reports how many threads its numeric libraries will use.

OpenMP and OpenBLAS read OMP_NUM_THREADS when they start, so a replica with num_cpus: 2 gets a
thread pool of 2 however many cores the machine has (the guide's "Configuring Parallelism").
"""
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy  # noqa: F401  (loads OpenBLAS, which sizes its pool from OMP_NUM_THREADS)
from threadpoolctl import threadpool_info


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        pools = [{"api": p.get("internal_api"), "num_threads": p.get("num_threads")} for p in threadpool_info()]
        body = json.dumps({
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", ""),
            "pools": pools,
            "process_threads": threading.active_count(),
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
