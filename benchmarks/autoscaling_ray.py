"""Ray Serve's side of benchmarks/autoscaling: the same two deployments (sleep 100 ms, autoscaled
1..4; echo, 0..1), the same load and the same measurements (benchmarks/autoscaling_common.py).

    .bench-ray-venv/bin/python benchmarks/autoscaling_ray.py HTTP_PORT OUT.json

The "target" Ray has no public field for: it is read as the replicas serve.status() lists in any
state but STOPPING (RUNNING + STARTING + ...), i.e. what the controller is currently aiming for.
"""
import asyncio
import json
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import autoscaling_common as common  # noqa: E402

import ray  # noqa: E402
from ray import serve  # noqa: E402

port, out = int(sys.argv[1]), sys.argv[2]


@serve.deployment(
    max_ongoing_requests=8,
    ray_actor_options={"num_cpus": 0.5},
    autoscaling_config={
        "min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2,
        "upscale_delay_s": 1, "downscale_delay_s": 3,
        "metrics_interval_s": 0.5, "look_back_period_s": 2,
    },
)
class B:
    async def __call__(self, request):
        await asyncio.sleep(0.1)
        return "ok"


@serve.deployment(
    ray_actor_options={"num_cpus": 0.5},
    autoscaling_config={
        "min_replicas": 0, "max_replicas": 1, "downscale_delay_s": 1,
        "metrics_interval_s": 0.5, "look_back_period_s": 2,
    },
)
class C:
    async def __call__(self, request):
        return request.url.path


def reader(app, dep):
    def read():
        d = serve.status().applications[app].deployments[dep]
        states = {str(k).split(".")[-1]: v for k, v in d.replica_states.items()}
        running = states.get("RUNNING", 0)
        target = sum(v for k, v in states.items() if k != "STOPPING")
        return running, target
    return read


result = {"system": "Ray Serve", "ray_version": ray.__version__}
try:
    t = time.monotonic()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(B.bind(), name="busy", route_prefix="/busy")
    serve.run(C.bind(), name="cold", route_prefix="/cold")
    result["startup_s"] = round(time.monotonic() - t, 1)
    print(f"ray serve up in {result['startup_s']} s", file=sys.stderr)
    result["step"] = common.step_response(reader("busy", "B"), port, "/busy")
    result["cold"] = common.cold_start(lambda: reader("cold", "C")()[0], port, "/cold/x")
except BaseException as e:  # noqa: BLE001 - the report says what failed
    traceback.print_exc()
    result["error"] = f"{type(e).__name__}: {e}"
finally:
    json.dump(result, open(out, "w"), indent=1)
    try:
        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()
