"""A process replica serving many models (multiplexing), standard library only.

The model is the `serve_multiplexed_model_id` request header, which every proxy passes through
unchanged. The replica keeps at most MAX_MODELS (default 3) loaded, least recently used evicted,
and a load takes LOAD_MS (default 200). It cannot tell its node which models it holds: routers
take it to hold the last `max_num_models_per_replica` models sent to it, so set that in the
deployment's user_config to the same number. Answers JSON: the model, whether it was loaded
already, and the models held.
"""
import json
import os
import signal
import sys
import threading
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler

from tokens import Server  # the same threaded server, with a deep backlog

MAX_MODELS = int(os.environ.get("MAX_MODELS", "3"))
LOAD_MS = float(os.environ.get("LOAD_MS", "200"))
models = OrderedDict()
lock = threading.Lock()


def model(model_id):
    """The model, loaded first if it is not held; returns (model, was it held)."""
    with lock:
        if model_id in models:
            models.move_to_end(model_id)
            return models[model_id], True
    time.sleep(LOAD_MS / 1000)
    with lock:
        models[model_id] = {"id": model_id, "pid": os.getpid()}
        models.move_to_end(model_id)
        while len(models) > MAX_MODELS:
            models.popitem(last=False)
        return models[model_id], False


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        model_id = self.headers.get("serve_multiplexed_model_id")
        if not model_id:
            status, answer = 400, {"error": "send the serve_multiplexed_model_id header"}
        else:
            loaded, held = model(model_id)
            with lock:
                holding = list(models)
            status, answer = 200, {"model_id": loaded["id"], "pid": loaded["pid"], "hit": held, "models": holding}
        body = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    Server(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
