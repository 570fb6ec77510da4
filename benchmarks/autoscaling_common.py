"""Shared pieces of benchmarks/autoscaling (standard library only, so that both the system python3
and the Ray virtual environment can import it): the closed-loop load generator, the step-response
and cold-start procedures (given a function that reads replica counts), the swift-serve driver,
and the report (markdown table + side-by-side SVG timelines, drawn by serve-plot).

    python3 benchmarks/autoscaling_common.py swift ADMIN_PORT HTTP_PORT OUT.json
    python3 benchmarks/autoscaling_common.py report SWIFT.json RAY.json|- OUT.md OUT.svg HEADER
"""
import http.client
import json
import statistics
import sys
import threading
import time

import serve_plot

CLIENTS = 16
LOAD_S = 10.0
POLL_S = 0.1
MAX_REPLICAS = 4
UPSCALE_DELAY_S = 1.0
METRICS_INTERVAL_S = 0.5


def load(port, path, clients=CLIENTS, seconds=LOAD_S):
    """CLIENTS closed-loop clients (one thread, one keep-alive http.client connection each)."""
    stop = time.monotonic() + seconds
    counts = {"ok": 0, "err": 0}
    lock = threading.Lock()

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        ok = err = 0
        while time.monotonic() < stop:
            try:
                conn.request("GET", path)
                r = conn.getresponse()
                r.read()
                if r.status == 200:
                    ok += 1
                else:
                    err += 1
            except Exception:
                err += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                time.sleep(0.01)
        conn.close()
        with lock:
            counts["ok"] += ok
            counts["err"] += err

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts


def wait_for(read, pred, timeout, what):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            last = read()
            if pred(*last):
                return last
        except Exception as e:  # a poll can fail while things start
            last = repr(e)
        time.sleep(POLL_S)
    raise SystemExit(f"timed out waiting for {what} (last: {last})")


def step_response(read, port, path, settle_timeout=60.0):
    """read() -> (running, target). Load step at t=0, load stops at LOAD_S; returns the timeline
    and the derived times (None where it never happened)."""
    wait_for(read, lambda r, t: r == 1 and t == 1, 120, "1 running replica before the step")
    timeline = []
    done = threading.Event()
    t0 = time.monotonic()

    def poller():
        while not done.is_set():
            now = time.monotonic()
            try:
                running, target = read()
                timeline.append((round(now - t0, 3), running, target))
            except Exception:
                pass
            time.sleep(max(0.0, POLL_S - (time.monotonic() - now)))

    th = threading.Thread(target=poller, daemon=True)
    th.start()
    counts = load(port, path)
    t_stop = time.monotonic() - t0
    end = time.monotonic() + settle_timeout
    while time.monotonic() < end:
        if timeline and timeline[-1][0] > t_stop + 0.5 and timeline[-1][1] == 1 and timeline[-1][2] == 1:
            break
        time.sleep(POLL_S)
    time.sleep(1.0)
    done.set()
    th.join()

    def first(pred, after=0.0):
        for t, r, g in timeline:
            if t >= after and pred(r, g):
                return t
        return None

    back = None
    for t, r, g in timeline:  # first time after the stop from which it stays at 1 running
        if t >= t_stop and r == 1:
            if back is None:
                back = t
        elif t >= t_stop:
            back = None
    return {
        "timeline": timeline,
        "load_stop_s": round(t_stop, 3),
        "requests_ok": counts["ok"],
        "requests_err": counts["err"],
        "first_upscale_s": first(lambda r, g: g > 1),
        "first_new_running_s": first(lambda r, g: r > 1),
        "max_running_s": first(lambda r, g: r >= MAX_REPLICAS),
        "max_running": max((r for _, r, _ in timeline), default=0),
        "back_to_1_after_stop_s": None if back is None else round(back - t_stop, 3),
    }


def cold_start(read, port, path, rounds=3):
    """read() -> running replicas of the scale-to-zero deployment. Median GET latency at 0."""
    samples = []
    for _ in range(rounds):
        wait_for(lambda: (read(),), lambda r: r == 0, 120, "0 replicas")
        time.sleep(0.2)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        t = time.monotonic()
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        ms = (time.monotonic() - t) * 1000
        conn.close()
        if r.status != 200:
            raise SystemExit(f"cold-start GET {path} answered {r.status}")
        samples.append(round(ms, 1))
    # and a warm one right after, for scale
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    t = time.monotonic()
    conn.request("GET", path)
    conn.getresponse().read()
    warm = round((time.monotonic() - t) * 1000, 2)
    return {"cold_ms": samples, "cold_median_ms": statistics.median(samples), "warm_ms": warm}


# --- swift-serve ------------------------------------------------------------------------------------

def swift_reader(admin_port, app, dep):
    def read():
        c = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=5)
        c.request("GET", "/api/serve/applications/")
        body = json.loads(c.getresponse().read())
        c.close()
        d = body["applications"][app]["deployments"][dep]
        running = sum(1 for r in d.get("replicas", []) if r.get("state") == "RUNNING")
        return running, int(d.get("target_replicas", 0))
    return read


def run_swift(admin_port, http_port, out):
    busy = swift_reader(admin_port, "busy", "B")
    cold = swift_reader(admin_port, "cold", "C")
    result = {"system": "swift-serve"}
    result["step"] = step_response(busy, http_port, "/busy")
    result["cold"] = cold_start(lambda: cold()[0], http_port, "/cold/x")
    json.dump(result, open(out, "w"), indent=1)


# --- report -------------------------------------------------------------------------------------------

def fmt(v, unit="s"):
    if v is None:
        return "never"
    return f"{v:.2f} {unit}" if unit == "s" else f"{v:.1f} {unit}"


def report(swift_path, ray_path, md_path, svg_path, header):
    sw = json.load(open(swift_path))
    ray = json.load(open(ray_path)) if ray_path != "-" else None
    reaction_target = UPSCALE_DELAY_S + METRICS_INTERVAL_S

    def cell(res, f):
        if res is None:
            return "n/a"
        if "error" in res and res.get("step") is None:
            return "failed"
        try:
            return f(res)
        except Exception:
            return "n/a"

    rows = [
        ("load step → first scale-up decision (target > 1)",
         lambda r: fmt(r["step"]["first_upscale_s"]), f"≤ {reaction_target:.1f} s (upscale_delay_s + metrics_interval_s)"),
        ("load step → first added replica RUNNING",
         lambda r: fmt(r["step"]["first_new_running_s"]), "—"),
        (f"load step → {MAX_REPLICAS} replicas RUNNING",
         lambda r: fmt(r["step"]["max_running_s"]), "—"),
        ("load stop → back to 1 replica RUNNING",
         lambda r: fmt(r["step"]["back_to_1_after_stop_s"]), "≈ downscale_delay_s (3 s) + look-back"),
        ("requests served in the 10 s step (errors)",
         lambda r: f'{r["step"]["requests_ok"]} ({r["step"]["requests_err"]})', "—"),
        ("cold start, echo at 0 replicas (median of 3)",
         lambda r: f'{r["cold"]["cold_median_ms"]:.1f} ms', "< 100 ms"),
        ("cold start samples",
         lambda r: ", ".join(f"{x:.0f}" for x in r["cold"]["cold_ms"]) + " ms", "—"),
        ("same request, warm",
         lambda r: f'{r["cold"]["warm_ms"]:.1f} ms', "—"),
    ]
    lines = [header, "", "| metric | swift-serve | Ray Serve | target |", "|---|---|---|---|"]
    for name, f, target in rows:
        lines.append(f"| {name} | {cell(sw, f)} | {cell(ray, f)} | {target} |")
    if ray is None:
        lines += ["", "Ray Serve: not measured in this run (see the script's output)."]
    elif "error" in ray:
        lines += ["", f"Ray Serve failed: {ray['error']}"]
    lines += ["", f"Timelines: `{svg_path.split('/')[-1]}`."]
    open(md_path, "w").write("\n".join(lines) + "\n")
    serve_plot.draw(timelines([("swift-serve", sw), ("Ray Serve", ray)]), svg_path)
    print("\n".join(lines))


def timelines(panels):
    """The step responses side by side, as serve-plot's JSON (benchmarks/serve_plot.py): replicas
    running and targeted against the time since the load step, the load's span shaded."""
    tmax = 5.0
    for _, r in panels:
        if r and r.get("step"):
            tmax = max(tmax, max((t for t, _, _ in r["step"]["timeline"]), default=0))
    out = []
    for name, r in panels:
        panel = {"title": f"{name}: replicas vs time since load step", "height": 180,
                 "x": {"label": "seconds", "min": 0, "max": float(int(tmax) + 1)},
                 "y": {"label": "replicas", "min": 0, "max": MAX_REPLICAS + 1, "integer": True}}
        if r and r.get("step"):
            s = r["step"]
            panel["bands"] = [{"from": 0, "to": s["load_stop_s"], "label": f"{CLIENTS} clients"}]
            panel["series"] = [
                {"name": "running", "kind": "step", "color": "#3182bd", "points": [[t, v] for t, v, _ in s["timeline"]]},
                {"name": "target", "kind": "step", "color": "#e6550d", "dash": "6 4",
                 "points": [[t, v] for t, _, v in s["timeline"]]},
            ]
        else:
            panel["note"] = "not measured"
        out.append(panel)
    return {"columns": 2, "panels": out}


if __name__ == "__main__":
    if sys.argv[1] == "swift":
        run_swift(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    elif sys.argv[1] == "report":
        report(*sys.argv[2:7])
    else:
        raise SystemExit(__doc__)
