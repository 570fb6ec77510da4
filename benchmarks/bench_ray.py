"""Ray Serve's side of `make bench` (benchmarks/bench.py): the same deployments as swift-serve's,
driven by commands on stdin.

    .bench-ray-venv/bin/python benchmarks/bench_ray.py HTTP_PORT

Starts Ray (ray.init(num_cpus=4), as swift-serve gets --num-cpus 4) and Serve's HTTP proxy on
127.0.0.1:HTTP_PORT, deploys the no-op application (`/echo`, answers "/bench", 1 replica,
max_ongoing_requests 100) and prints "ready". Then, one command a line, each answered "ok":

    sleep        deploy the `/sleep` application (asyncio.sleep(10 ms) per request)
    replicas N   set the no-op deployment to N replicas and wait until N are RUNNING

End of input shuts Serve and Ray down.
"""
import asyncio
import sys
import time

import ray
from ray import serve
from starlette.responses import PlainTextResponse

port = int(sys.argv[1])


@serve.deployment(max_ongoing_requests=100)
class Noop:
    async def __call__(self, request):
        return PlainTextResponse("/bench")


@serve.deployment(max_ongoing_requests=100)
class Sleep:
    async def __call__(self, request):
        await asyncio.sleep(0.010)
        return PlainTextResponse("slept")


def running(app, dep):
    d = serve.status().applications[app].deployments[dep]
    return {str(k).split(".")[-1]: v for k, v in d.replica_states.items()}.get("RUNNING", 0)


def say(line):
    print(line, flush=True)


ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
serve.start(http_options={"host": "127.0.0.1", "port": port})
serve.run(Noop.options(num_replicas=1).bind(), name="echo", route_prefix="/echo")
say("ready")
try:
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "sleep":
            serve.run(Sleep.bind(), name="sleep", route_prefix="/sleep")
        elif words[0] == "replicas":
            n = int(words[1])
            serve.run(Noop.options(num_replicas=n).bind(), name="echo", route_prefix="/echo")
            deadline = time.monotonic() + 120
            while running("echo", "Noop") != n and time.monotonic() < deadline:
                time.sleep(0.2)
        say("ok")
finally:
    serve.shutdown()
    ray.shutdown()
