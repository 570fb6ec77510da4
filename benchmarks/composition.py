#!/usr/bin/env python3
"""`make bench-composition`: what a handle call and a stream cost, on release binaries.

    python3 benchmarks/composition.py          # about two minutes
    REQUESTS=500 python3 benchmarks/composition.py

Two topologies, each started fresh:
- one node: an embedded `serve-head --num-cpus 4`; the ingress deployment (`compose`, calling
  `Echo` through a handle) and `Echo` are on the same node, so the handle call is in process;
- two nodes: `serve-head --num-cpus 0`, worker A (resource `front`, its own proxy, measured) and
  worker B (resource `back`) with `Echo`: the handle call crosses from A to B over HTTP/2.

Measured with one keep-alive client, requests one after another (REQUESTS each, interleaved in
rounds so that both sides of a comparison see the same machine), medians:
- a handle call's added latency: GET /composed (ingress -> handle -> Echo) minus GET /direct
  (ingress is Echo itself, on the same node as the composed app's Echo);
- time to first byte of a stream: the `tokens` handler's first event through the proxy, relayed
  through a handle (`compose` relay), and a Python replica's (examples/tokens.py) through the
  proxy against the same child asked directly on its own port.

Writes benchmarks/results/composition-latest.md and prints it.
"""
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from bench import Processes, child_port, first_200, free_port, log, RELEASE, TOKEN  # noqa: E402

REQUESTS = int(os.environ.get("REQUESTS", "2000"))
ROUNDS = int(os.environ.get("ROUNDS", "5"))


def config(front, back):
    """The apps, placed by resources (`front`/`back`: the ray_actor_options resources, or {})."""
    return f"""
http_options: {{host: 127.0.0.1}}
applications:
  - name: direct
    route_prefix: /direct
    deployments:
      - {{name: Echo, handler: echo, max_ongoing_requests: 100, ray_actor_options: {{num_cpus: 0.1, resources: {back}}}}}
  - name: composed
    route_prefix: /composed
    ingress: Front
    deployments:
      - {{name: Echo, handler: echo, max_ongoing_requests: 100, ray_actor_options: {{num_cpus: 0.1, resources: {back}}}}}
      - {{name: Front, handler: compose, user_config: {{chain: [Echo]}}, max_ongoing_requests: 100,
         ray_actor_options: {{num_cpus: 0.1, resources: {front}}}}}
  - name: tokens
    route_prefix: /tokens
    deployments:
      - {{name: Tokens, handler: tokens, max_ongoing_requests: 100, ray_actor_options: {{num_cpus: 0.1, resources: {back}}}}}
  - name: relay
    route_prefix: /relay
    ingress: Chat
    deployments:
      - {{name: Model, handler: tokens, max_ongoing_requests: 100, ray_actor_options: {{num_cpus: 0.1, resources: {back}}}}}
      - {{name: Chat, handler: compose, user_config: {{relay: Model}}, max_ongoing_requests: 100,
         ray_actor_options: {{num_cpus: 0.1, resources: {front}}}}}
  - name: py
    route_prefix: /py
    deployments:
      - {{name: PyTokens, command: ["python3", "{ROOT}/examples/tokens.py"], health_path: /healthz, max_ongoing_requests: 8,
         ray_actor_options: {{num_cpus: 0.1, resources: {back}}}}}
"""


def latencies(port, path, count):
    """Seconds per request, one keep-alive connection, one after another."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times = []
    for _ in range(count):
        started = time.perf_counter()
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        times.append(time.perf_counter() - started)
        if response.status != 200:
            raise RuntimeError(f"GET {path} answered {response.status}: {body[:200]!r}")
    connection.close()
    return times


def first_byte(port, path):
    """Seconds from sending the request to the first body byte of its (streamed) response."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    started = time.perf_counter()
    connection.request("GET", path)
    response = connection.getresponse()
    response.read1(1)
    elapsed = time.perf_counter() - started
    response.read()
    connection.close()
    return elapsed


def median_ms(values):
    return statistics.median(values) * 1000


def compare(port, a, b, count):
    """Medians (ms) of a and b, measured in interleaved rounds."""
    left, right = [], []
    per_round = max(1, count // ROUNDS)
    for _ in range(ROUNDS):
        left += latencies(port, a, per_round)
        right += latencies(port, b, per_round)
    return median_ms(left), median_ms(right)


def ttfb(port, a, b, count=200):
    """Median time to first byte (ms) of a and b on one proxy, interleaved."""
    return ttfb_pair(port, a, port, b, count)


def wait_running(admin, apps, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
            connection.request("GET", "/api/serve/applications/")
            status = json.loads(connection.getresponse().read())["applications"]
            connection.close()
            if all(status.get(app, {}).get("status") == "RUNNING" for app in apps):
                return
        except (OSError, ValueError, http.client.HTTPException):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{apps} not RUNNING within {timeout} s")


def run(topology, work):
    procs = Processes()
    d = os.path.join(work, topology.replace(" ", "-"))
    os.makedirs(d)
    cluster, http_port, admin = free_port(), free_port(), free_port()
    two = topology == "two nodes"
    cfg = os.path.join(d, "config.yaml")
    open(cfg, "w").write(config("{front: 1}" if two else "{}", "{back: 1}" if two else "{}"))
    head = [f"{RELEASE}/serve-head", "--host", "127.0.0.1", "--port", str(cluster), "--http-host", "127.0.0.1",
            "--http-port", str(http_port), "--admin-port", str(admin), "--state-dir", os.path.join(d, "state"),
            "--token", TOKEN, "--config", cfg, "--num-cpus", "0" if two else "4"]
    try:
        procs.start(head, os.path.join(d, "head.log"))
        port = http_port
        if two:
            port = free_port()
            for name, resources, proxy in (("a", '{"front": 10}', port), ("b", '{"back": 10}', free_port())):
                procs.start([f"{RELEASE}/serve-worker", "--address", f"127.0.0.1:{cluster}", "--token", TOKEN,
                             "--num-cpus", "2", "--resources", resources, "--listen-host", "127.0.0.1",
                             "--node-address", "127.0.0.1", "--http-host", "127.0.0.1", "--http-port", str(proxy)],
                            os.path.join(d, f"worker-{name}.log"))
        wait_running(admin, ["direct", "composed", "tokens", "relay", "py"])
        for path in ("/direct/x", "/composed/x", "/tokens?n=1", "/relay?n=1", "/py?n=1"):
            first_200(port, path, time.monotonic(), timeout=60)
        log(f"{topology}: measuring")
        latencies(port, "/composed/x", 200)   # warm-up
        direct, composed = compare(port, "/direct/x", "/composed/x", REQUESTS)
        stream, relayed = ttfb(port, "/tokens?n=2&ms=1", "/relay?n=2&ms=1")
        row = {"topology": topology, "direct_ms": direct, "composed_ms": composed, "handle_ms": composed - direct,
               "stream_ttfb_ms": stream, "relayed_ttfb_ms": relayed}
        _, child = child_port(procs, marker="tokens.py")
        proxied, own = ttfb_pair(port, "/py?n=2&ms=1", child, "/?n=2&ms=1")
        row.update({"py_proxy_ttfb_ms": proxied, "py_direct_ttfb_ms": own})
        return row
    finally:
        procs.stop()


def ttfb_pair(port_a, a, port_b, b, count=200):
    """Median time to first byte (ms) of GET a on port_a and GET b on port_b, interleaved."""
    left, right = [], []
    for _ in range(count):
        left.append(first_byte(port_a, a))
        right.append(first_byte(port_b, b))
    return median_ms(left), median_ms(right)


def main():
    if os.environ.get("SKIP_BUILD") != "1":
        subprocess.run(["swift", "build", "-c", "release", "--static-swift-stdlib"], cwd=ROOT, check=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-composition-") as work:
        for topology in ("one node", "two nodes"):
            rows.append(run(topology, work))
    lines = [
        f"Composition and streaming, {time.strftime('%Y-%m-%d')}, release binaries, medians of {REQUESTS} "
        f"sequential requests on one keep-alive connection (interleaved in {ROUNDS} rounds).",
        "",
        "| topology | direct request | through a handle | handle call adds | stream TTFB | relayed through a handle | Python stream via proxy | Python stream direct |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['topology']} | {r['direct_ms']:.3f} ms | {r['composed_ms']:.3f} ms | {r['handle_ms']:.3f} ms | "
            f"{r['stream_ttfb_ms']:.3f} ms | {r['relayed_ttfb_ms']:.3f} ms | "
            f"{r['py_proxy_ttfb_ms']:.3f} ms | {r['py_direct_ttfb_ms']:.3f} ms |")
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    open(os.path.join(ROOT, "benchmarks", "results", "composition-latest.md"), "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
