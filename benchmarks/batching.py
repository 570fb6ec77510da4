#!/usr/bin/env python3
"""`make bench-batching`: what batching and multiplexing buy, on release binaries.

    python3 benchmarks/batching.py              # about four minutes
    DURATION=5 REQUESTS=1000 python3 benchmarks/batching.py

One embedded `serve-head --num-cpus 4` (proxy, controller and replicas in one process).

Batching: the built-in `batched` handler stands for a model on an accelerator that runs one
batch at a time and costs 5 ms per batch plus 0.1 ms per item. One replica per variant,
`wrk -t 2 -c 64 -d DURATION` on it through the proxy:
- unbatched: `max_batch_size: 1` (one call at a time, as a GPU runs a model without batching);
- Ray's defaults: `max_batch_size: 10`, `batch_wait_timeout_s: 0.01`, `max_ongoing_requests: 5`
  (the trap: a replica admits 5 calls, so a batch never holds more than 5);
- `max_batch_size: 10` with `max_ongoing_requests: 64`;
- `max_batch_size: 32` with `max_ongoing_requests: 64`.
Each run also reports the mean batch size its answers saw (every answer says its batch's size).

Multiplexing: the built-in `multiplexed` handler, 4 replicas holding at most 3 models each, a
load taking LOAD_MS; 10 models, REQUESTS requests from 8 client threads, models drawn uniformly
or with a 1/k skew (Zipf, s = 1). Model-aware routing: the model in `serve_multiplexed_model_id`.
Model-blind routing: the model in `?model=` instead, so every proxy routes by power of two
choices over queue lengths alone, which is random as far as the model is concerned. The hit
rate is the share of requests whose replica held the model already (the answer says).

Writes benchmarks/results/batching-latest.md and prints it.
"""
import http.client
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from bench import Processes, first_200, free_port, log, RELEASE, TOKEN, wrk  # noqa: E402
import bench  # noqa: E402

DURATION = int(os.environ.get("DURATION", "15"))
REQUESTS = int(os.environ.get("REQUESTS", "2000"))
LOAD_MS = float(os.environ.get("LOAD_MS", "50"))
CLIENTS = 8
bench.DURATION = DURATION

VARIANTS = [
    # (app, label, max_ongoing_requests, user_config)
    ("unbatched", "unbatched (max_batch_size 1)", 64, "{max_batch_size: 1}"),
    ("ray-defaults", "Ray's defaults: max_batch_size 10, max_ongoing_requests 5", 5, "{max_batch_size: 10, batch_wait_timeout_s: 0.01}"),
    ("batch10", "max_batch_size 10, max_ongoing_requests 64", 64, "{max_batch_size: 10, batch_wait_timeout_s: 0.01}"),
    ("batch32", "max_batch_size 32, max_ongoing_requests 64", 64, "{max_batch_size: 32, batch_wait_timeout_s: 0.01}"),
]


def config():
    apps = []
    for app, _, ongoing, user_config in VARIANTS:
        apps.append(f"""  - name: {app}
    route_prefix: /{app}
    deployments:
      - {{name: Model, handler: batched, max_ongoing_requests: {ongoing}, user_config: {user_config},
         ray_actor_options: {{num_cpus: 0.25}}}}""")
    apps.append(f"""  - name: models
    route_prefix: /models
    deployments:
      - {{name: Models, handler: multiplexed, num_replicas: 4, max_ongoing_requests: 16,
         user_config: {{max_num_models_per_replica: 3, load_ms: {LOAD_MS}}}, ray_actor_options: {{num_cpus: 0.25}}}}""")
    return "http_options: {host: 127.0.0.1}\napplications:\n" + "\n".join(apps) + "\n"


def mean_batch_size(port, path, count=64):
    """The mean batch size seen by `count` concurrent requests."""
    sizes = []
    lock = threading.Lock()

    def one(index):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", f"{path}?item={index}")
        answer = json.loads(connection.getresponse().read())
        connection.close()
        with lock:
            sizes.append(answer["batch_size"])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(sizes) / len(sizes)


def multiplexing(port, aware, skewed, seed):
    """Hit rate, requests per second and failures of REQUESTS requests over 10 models."""
    weights = [1 / (k + 1) if skewed else 1 for k in range(10)]
    rng = random.Random(seed)
    plan = [f"m{rng.choices(range(10), weights)[0]}" for _ in range(REQUESTS)]
    hits, failures = [0], [0]
    lock = threading.Lock()

    def client(part):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for model in part:
            if aware:
                connection.request("GET", "/models", headers={"serve_multiplexed_model_id": model})
            else:
                connection.request("GET", f"/models?model={model}")
            response = connection.getresponse()
            body = response.read()
            with lock:
                if response.status != 200 or json.loads(body)["model_id"] != model:
                    failures[0] += 1
                elif json.loads(body)["hit"]:
                    hits[0] += 1
        connection.close()

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(plan[i::CLIENTS],)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    return {"hit_rate": hits[0] / REQUESTS, "rps": REQUESTS / elapsed, "failures": failures[0]}


def main():
    if os.environ.get("SKIP_BUILD") != "1":
        subprocess.run(["swift", "build", "-c", "release", "--static-swift-stdlib"], cwd=ROOT, check=True)
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="bench-batching-") as work:
        cluster, port, admin = free_port(), free_port(), free_port()
        cfg = os.path.join(work, "config.yaml")
        open(cfg, "w").write(config())
        try:
            procs.start([f"{RELEASE}/serve-head", "--host", "127.0.0.1", "--port", str(cluster), "--http-host", "127.0.0.1",
                         "--http-port", str(port), "--admin-port", str(admin), "--state-dir", os.path.join(work, "state"),
                         "--token", TOKEN, "--config", cfg, "--num-cpus", "4"], os.path.join(work, "head.log"))
            for app, _, _, _ in VARIANTS:
                first_200(port, f"/{app}?item=x", time.monotonic(), timeout=120)
            first_200(port, "/models?model=warm", time.monotonic(), timeout=120)
            batching = []
            for app, label, _, _ in VARIANTS:
                log(f"batching: {label}")
                result = wrk(port, f"/{app}", 64)
                result["batch"] = mean_batch_size(port, f"/{app}")
                batching.append((label, result))
            mux = []
            for skewed in (False, True):
                for aware in (True, False):
                    log(f"multiplexing: {'skewed' if skewed else 'uniform'}, {'model-aware' if aware else 'model-blind'}")
                    # Each run starts from caches that the other mode filled: one warm-up run of
                    # the same mode first, then the measured one.
                    multiplexing(port, aware, skewed, seed=1)
                    mux.append((skewed, aware, multiplexing(port, aware, skewed, seed=2)))
        finally:
            procs.stop()
    unbatched = batching[0][1]["rps"]
    lines = [
        f"Batching and multiplexing, {time.strftime('%Y-%m-%d')}, release binaries, one embedded head (--num-cpus 4).",
        "",
        f"Batching: the `batched` handler (5 ms per batch + 0.1 ms per item, one batch at a time), one replica, "
        f"`wrk -t 2 -c 64 -d {DURATION}s` through the proxy; mean batch size of 64 concurrent requests after.",
        "",
        "| variant | req/s | vs unbatched | p50 | p99 | errors | mean batch |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, r in batching:
        lines.append(f"| {label} | {r['rps']:.0f} | {r['rps'] / unbatched:.1f}× | {r['p50_us'] / 1000:.1f} ms | "
                     f"{r['p99_us'] / 1000:.1f} ms | {r['errors']} | {r['batch']:.1f} |")
    lines += [
        "",
        f"Multiplexing: the `multiplexed` handler, 4 replicas × at most 3 models, a load takes {LOAD_MS:.0f} ms; "
        f"10 models, {REQUESTS} requests from {CLIENTS} clients (after a warm-up run of the same kind).",
        "",
        "| models drawn | routing | cache hit rate | req/s | failed |",
        "| --- | --- | --- | --- | --- |",
    ]
    for skewed, aware, r in mux:
        lines.append(f"| {'1/k skew' if skewed else 'uniform'} | "
                     f"{'model-aware (header)' if aware else 'model-blind (?model=, P2C)'} | "
                     f"{r['hit_rate'] * 100:.1f}% | {r['rps']:.0f} | {r['failures']} |")
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    open(os.path.join(ROOT, "benchmarks", "results", "batching-latest.md"), "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
