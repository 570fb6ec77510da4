#!/usr/bin/env python3
"""`make bench-control-plane`: the control plane at scale, with simulated workers (issue 16).

    python3 benchmarks/control_plane.py              # 100, 250, 500 and 1,000 nodes (long)
    CP_QUICK=1 python3 benchmarks/control_plane.py   # 100 and 250 nodes, smaller steps: minutes

Knobs (environment): CP_QUICK=1; CP_NODES (node counts, e.g. "100,500"); CP_REST_S (seconds of
each at-rest window: 15, quick 8); CP_STEP_TIMEOUT_S (how long a step may take to settle: 900,
quick 180); CP_SIM_THREADS (the simulator's event loops: 2); CP_SIM_TABLES (version: the
simulated proxies read only each route table's header; full: they decode and apply it, as a
proxy does); CP_PROFILE=1 (perf record -g of the head at rest at the largest count and during the
rolling update; reports in benchmarks/results/raw/); SKIP_BUILD=1; SERVE_BIN (.build/release).

One release `serve-head --num-cpus 0` (it hosts nothing, so every replica lands on a simulated
node) and one `serve-control-sim` (benchmarks/control-plane/sim): N simulated workers in one
process, each with its own TCP connection and control stream speaking the real protocol, with
12 logical CPUs each and replicas that are bookkeeping only. Deployments are `echo` replicas of
1 CPU, 100 per application, `placement_strategy: SPREAD`, so N nodes hold 10 N replicas (10 per
node, and room for 20% more, which a node loss needs). Steps, each printing progress lines:

- join: for each N, the simulator grows to N nodes (500 a second) and the config to N / 10
  applications; then the head at rest with every node heartbeating every 0.5 s (the head's
  interval), and every 1 s (the head cannot be told another interval: the simulator's override);
- at the largest N, a rolling update: every deployment's env changes, so all 10 N replicas are
  replaced;
- 10% of the nodes silent (they stop sending and reading; the head's heartbeat timeout finds
  them), then back; 10% (others) reset (their connections closed with an RST, as a crash does),
  then back;
- autoscaling: the config becomes one autoscaled deployment (min 100, max 5,000, target 1
  ongoing request, 1 s delays; quick: max 1,000), driven by the queue lengths the simulated
  replicas report (`POST /load`): up to max and back to min.

Measured per step: the head's CPU (% of one core, /proc/PID/stat) and RSS (VmRSS; peak while the
step ran), the simulator's CPU; the time from the change (or the kill) to the last simulated proxy
holding the head's final route table; each table's delivery spread (first to last node) p50/p99;
heartbeat processing p50/p99 from the head's `serve_head_heartbeat_seconds` histogram ("n/a"
when the head has none); control-plane bytes per second per node (the simulator's counters).

Writes benchmarks/results/control-plane-latest.md and .json, the plot
benchmarks/results/control-plane-cpu.svg (head CPU at rest against node count), and the "Control
plane at scale" section of benchmarks/README.md.
"""
import http.client
import json
import math
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from bench import Processes, free_port, log, RELEASE, TOKEN  # noqa: E402
import serve_plot  # noqa: E402

QUICK = os.environ.get("CP_QUICK") == "1"
NODE_COUNTS = [int(n) for n in os.environ.get("CP_NODES", "100,250" if QUICK else "100,250,500,1000").split(",")]
REST_S = float(os.environ.get("CP_REST_S", "8" if QUICK else "15"))
STEP_TIMEOUT_S = float(os.environ.get("CP_STEP_TIMEOUT_S", "180" if QUICK else "900"))
PROFILE = os.environ.get("CP_PROFILE") == "1"
# The simulator's event loops.
SIM_THREADS = int(os.environ.get("CP_SIM_THREADS", "2"))
# How the simulated proxies take route tables: "version" (the header only) keeps the
# simulator's CPU off the head's measurement; "full" decodes and applies each, as a proxy does
# (a thousand nodes decoding every table on one machine is not what a thousand machines do).
SIM_TABLES = os.environ.get("CP_SIM_TABLES", "version")
CPUS_PER_NODE = 12
REPLICAS_PER_NODE = 10
REPLICAS_PER_APP = 100
# The autoscaled deployment's range: 100 to 5,000 replicas (quick: 1,000), within 80% of the
# largest cluster's CPUs.
AUTOSCALE_MIN = 100
AUTOSCALE_MAX = min(1000 if QUICK else 5000, int(max(NODE_COUNTS) * CPUS_PER_NODE * 0.8))
KILL_FRACTION = 0.1
# The head's --heartbeat-timeout-s (its default, 5 s, unless CP_HEARTBEAT_TIMEOUT_S).
HEARTBEAT_TIMEOUT_S = float(os.environ.get("CP_HEARTBEAT_TIMEOUT_S", "5"))
# CP_CHANGES=0: the join steps and rests only (no rolling update, kills, autoscaling).
CHANGES = os.environ.get("CP_CHANGES", "1") != "0"
# CP_TAG: write results/control-plane-TAG.{md,json} instead of -latest (and leave the README
# and the plot alone); CP_MERGE=PATH.json[,PATH.json]: add those runs' rows to this run's
# tables and plot (`merge`); CP_REPORT=PATH.json: run nothing, write the report of that run
# (with CP_MERGE's rows).
TAG = os.environ.get("CP_TAG")
MERGE = os.environ.get("CP_MERGE")
REPORT = os.environ.get("CP_REPORT")
# A step that is not a kill and finds more than this share of the nodes DEAD has collapsed: the
# head fell behind with the heartbeats. It ends there.
COLLAPSE_SHARE = 0.1
RESULTS = os.path.join(ROOT, "benchmarks", "results")
README = os.path.join(ROOT, "benchmarks", "README.md")
BEGIN = "<!-- make bench-control-plane (generated by benchmarks/control_plane.py) -->"
END = "<!-- /make bench-control-plane -->"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- reading processes and endpoints --------------------------------------------------------------

def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    stat = open(f"/proc/{pid}/stat").read()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Meter:
    """CPU (% of one core) of the head and the simulator over a window, and the head's RSS: at the
    end and the peak (sampled every 250 ms)."""

    def __init__(self, head, sim):
        self.head, self.sim = head, sim
        self.peak, self.done = 0.0, threading.Event()

    def __enter__(self):
        self.t0 = time.monotonic()
        self.head0, self.sim0 = cpu_seconds(self.head), cpu_seconds(self.sim)
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def sample(self):
        while not self.done.wait(0.25):
            try:
                self.peak = max(self.peak, rss_mib(self.head))
            except OSError:
                return

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        seconds = time.monotonic() - self.t0
        rss = rss_mib(self.head)
        self.result = {
            "seconds": seconds,
            "head_cpu_pct": 100 * (cpu_seconds(self.head) - self.head0) / seconds,
            "sim_cpu_pct": 100 * (cpu_seconds(self.sim) - self.sim0) / seconds,
            "head_rss_mib": rss,
            "head_rss_peak_mib": max(self.peak, rss),
        }


def call(port, method, path, body=None, token=None, timeout=60):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = body.encode() if isinstance(body, str) else body
    connection.request(method, path, body=data, headers=headers)
    response = connection.getresponse()
    text = response.read()
    connection.close()
    if response.status != 200:
        raise RuntimeError(f"{method} {path} answered {response.status}: {text[:500]!r}")
    return text


def call_json(port, method, path, body=None, token=None, timeout=60):
    return json.loads(call(port, method, path, body, token, timeout))


class Collapsed(Exception):
    pass


def wait_for(what, check, timeout=None, interval=0.25, abort=None):
    """Polls check() until it returns something true; returns (value, seconds waited) or raises
    TimeoutError, or Collapsed as soon as abort() gives a reason."""
    timeout = STEP_TIMEOUT_S if timeout is None else timeout
    started = time.monotonic()
    last_error = None
    said = started
    while time.monotonic() - started < timeout:
        reason = abort() if abort else None
        if reason:
            raise Collapsed(f"{what}: {reason}")
        try:
            value = check()
            if value:
                return value, time.monotonic() - started
        except (OSError, ValueError, RuntimeError, http.client.HTTPException) as error:
            last_error = error
        if time.monotonic() - said >= 60:
            said = time.monotonic()
            log(f"  still waiting for {what} ({said - started:.0f} s)")
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s" + (f" (last error: {last_error})" if last_error else ""))


HIST = re.compile(r'^serve_head_heartbeat_seconds_bucket\{(?:[^}]*,)?le="([^"]+)"[^}]*\}\s+([0-9.e+]+)')
GAUGE = re.compile(r'^serve_(nodes|replicas)\{(?:[^}]*,)?state="(\w+)"[^}]*\}\s+([0-9.e+]+)')


def scrape(admin):
    """The head's /metrics, the parts read here: nodes and replicas by state, and the heartbeat
    processing histogram (cumulative buckets summed over label sets; None when the head has none)."""
    text = call(admin, "GET", "/metrics").decode()
    buckets, nodes, replicas = {}, {}, {}
    for line in text.splitlines():
        m = HIST.match(line)
        if m:
            le = math.inf if m.group(1) == "+Inf" else float(m.group(1))
            buckets[le] = buckets.get(le, 0) + float(m.group(2))
            continue
        m = GAUGE.match(line)
        if m:
            into = nodes if m.group(1) == "nodes" else replicas
            into[m.group(2)] = into.get(m.group(2), 0) + int(float(m.group(3)))
    return {"heartbeat": buckets or None, "nodes": nodes, "replicas": replicas}


def histogram_quantiles(before, after, qs=(0.5, 0.99)):
    """Quantiles (seconds) of the observations between two scrapes, interpolated within buckets as
    Prometheus's histogram_quantile does; None without data."""
    if not after:
        return None
    les = sorted(after)
    counts = [after[le] - (before or {}).get(le, 0) for le in les]
    total = counts[-1]
    if total <= 0:
        return None
    out = []
    for q in qs:
        rank = q * total
        prev_le, prev_count = 0.0, 0.0
        for le, count in zip(les, counts):
            if count >= rank:
                if le == math.inf:
                    out.append(prev_le)
                else:
                    width = count - prev_count
                    out.append(prev_le + (le - prev_le) * ((rank - prev_count) / width if width else 1))
                break
            prev_le, prev_count = le, count
    return out


def quantile(values, q):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(math.ceil(q * len(values))) - 1)]


# --- the cluster ----------------------------------------------------------------------------------

class Cluster:
    """A release serve-head (hosting nothing) and the simulator."""

    def __init__(self, work):
        self.work = work
        self.procs = Processes()
        self.cluster_port, self.http_port, self.admin = free_port(), free_port(), free_port()
        self.control = free_port()
        # The step that did not settle, if one did not (the later steps are skipped).
        self.unsettled = None
        self.head = self.procs.start(
            [f"{RELEASE}/serve-head", "--num-cpus", "0", "--host", "127.0.0.1", "--port", str(self.cluster_port),
             "--http-host", "127.0.0.1", "--http-port", str(self.http_port), "--admin-port", str(self.admin),
             "--state-dir", os.path.join(work, "state"), "--token", TOKEN,
             "--heartbeat-timeout-s", str(HEARTBEAT_TIMEOUT_S)],
            os.path.join(work, "head.log"))
        wait_for("the head's admin API", lambda: call(self.admin, "GET", "/-/healthz"), timeout=60)
        self.sim = self.procs.start(
            [f"{RELEASE}/serve-control-sim", "--address", f"127.0.0.1:{self.cluster_port}", "--token", TOKEN,
             "--nodes", "0", "--cpus-per-node", str(CPUS_PER_NODE), "--control-port", str(self.control),
             "--join-rate", "500", "--threads", str(SIM_THREADS), "--tables", SIM_TABLES],
            os.path.join(work, "sim.log"))
        wait_for("the simulator's control API", lambda: self.status(), timeout=60)

    def status(self):
        return call_json(self.control, "GET", "/status")

    def post(self, path, body):
        return call_json(self.control, "POST", path, json.dumps(body))

    def deploy(self, yaml):
        return call_json(self.admin, "PUT", "/api/serve/applications/", yaml, token=TOKEN)

    def nodes(self):
        return call_json(self.admin, "GET", "/api/cluster/nodes")

    def applications(self):
        return call_json(self.admin, "GET", "/api/serve/applications/")["applications"]

    def meter(self):
        return Meter(self.head.pid, self.sim.pid)

    def metrics(self):
        return scrape(self.admin)

    def histogram(self):
        try:
            return self.metrics()["heartbeat"]
        except (OSError, RuntimeError, http.client.HTTPException):
            return None

    def logs(self):
        out = []
        for name in ("head.log", "sim.log"):
            path = os.path.join(self.work, name)
            if os.path.exists(path):
                out.append(f"--- {name} ---\n" + open(path, errors="replace").read()[-3000:])
        return "\n".join(out)

    def stop(self):
        self.procs.stop()

    # --- what a step waits for

    def node_count(self, state):
        """Nodes in `state` at the head (the head's own node is not one: it hosts nothing)."""
        return self.metrics()["nodes"].get(state, 0)

    def settled(self, expect_replicas, avoid=()):
        """True when every application is RUNNING with every replica RUNNING on its current
        version (none on `avoid`), `expect_replicas` in all. The head's metrics are asked first
        (cheap); its status (every replica) only once they say it may be so."""
        counts = self.metrics()["replicas"]
        if counts.get("RUNNING", 0) != expect_replicas or sum(counts.values()) != expect_replicas:
            return False
        apps = self.applications()
        total = 0
        for app in apps.values():
            if app["status"] != "RUNNING":
                return False
            for deployment in app["deployments"].values():
                if deployment["status"] != "HEALTHY":
                    return False
                for replica in deployment["replicas"]:
                    if replica["state"] != "RUNNING" or replica["node_id"] in avoid:
                        return False
                    total += 1
        return total == expect_replicas

    def table_everywhere(self):
        """The head's latest table version when every registered simulated node holds it."""
        version = self.nodes().get("route_table_version")
        status = self.status()
        registered = status["nodes"]["registered"]
        if version and registered and status["tables"]["holding"].get(version) == registered:
            return version
        return None

    def table_report(self, since_ms, version):
        """When `version` reached its last node (ms after since_ms), and the delivery spreads
        (first to last node) of the tables made since then."""
        versions = self.status()["tables"]["versions"]
        final = next((v for v in versions if v["version"] == version), None)
        # From the head's stamp to the last node where the head stamps its tables, else first to last node.
        spreads = [v["delivery_ms"] if v.get("delivery_ms") is not None else v["spread_ms"] for v in versions if v["first_unix_ms"] >= since_ms]
        return {
            "final_table": version,
            "to_last_node_s": (final["last_unix_ms"] - since_ms) / 1000 if final else None,
            "tables": len(spreads),
            "spread_p50_ms": quantile(spreads, 0.5),
            "spread_p99_ms": quantile(spreads, 0.99),
            "table_replicas": final["replicas"] if final else None,
        }


def config(apps, version="1"):
    lines = ["http_options: {host: 127.0.0.1}", "applications:"]
    for i in range(apps):
        lines.append(
            f"  - {{name: a{i:04d}, route_prefix: /a{i:04d}, deployments: [{{name: D, handler: echo, "
            f"num_replicas: {REPLICAS_PER_APP}, placement_strategy: SPREAD, "
            f"ray_actor_options: {{runtime_env: {{env_vars: {{VERSION: '{version}'}}}}}}}}]}}")
    return "\n".join(lines) + "\n"


def autoscaled_config():
    return f"""http_options: {{host: 127.0.0.1}}
applications:
  - name: auto
    route_prefix: /auto
    deployments:
      - name: A
        handler: echo
        placement_strategy: SPREAD
        autoscaling_config: {{min_replicas: {AUTOSCALE_MIN}, initial_replicas: {AUTOSCALE_MIN}, max_replicas: {AUTOSCALE_MAX},
          target_ongoing_requests: 1, upscale_delay_s: 1, downscale_delay_s: 1, metrics_interval_s: 0.5,
          look_back_period_s: 1, smoothing_factor: 1}}
"""


class Profiler:
    """perf record -g of the head for the length of a `with` block (CP_PROFILE=1)."""

    def __init__(self, pid, name):
        self.pid, self.name = pid, name

    def __enter__(self):
        self.proc = None
        if PROFILE:
            os.makedirs(os.path.join(RESULTS, "raw"), exist_ok=True)
            self.data = os.path.join(RESULTS, "raw", f"control-plane-{self.name}.perf.data")
            self.proc = subprocess.Popen(["perf", "record", "-F", "499", "-g", "-p", str(self.pid), "-o", self.data],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc):
        if not self.proc:
            return
        self.proc.send_signal(2)
        self.proc.wait(60)
        # Flat (where the time is spent) and inclusive (which of the head's own functions it is
        # spent under), Swift names demangled.
        flat = demangle(self.report("--no-children", "--percent-limit", "0.5"))
        inclusive = demangle("\n".join(l for l in self.report("--children", "--percent-limit", "2").splitlines()
                                        if re.search(r"\d+Serve(Head|Core|Proxy|Wire|Proto)", l)))
        path = os.path.join(RESULTS, "raw", f"control-plane-{self.name}.perf.txt")
        open(path, "w").write(f"# flat (--no-children)\n{flat}\n# inclusive (--children), the head's own functions\n{inclusive}\n")
        log(f"profile of the head ({self.name}): {path}")
        for line in [l for l in flat.splitlines() if l.strip() and not l.startswith("#")][:15]:
            log("  " + line[:160])
        for line in [l for l in inclusive.splitlines() if l.strip() and not l.startswith("#")][:15]:
            log("  " + line[:160])

    def report(self, *options):
        return subprocess.run(["perf", "report", "-i", self.data, "--stdio", "-g", "none", "--sort", "sym", *options],
                              capture_output=True, text=True).stdout


def demangle(text):
    """Swift names as people read them (`swift demangle`), or as they are without it."""
    try:
        return subprocess.run(["swift", "demangle", "--simplified"], input=text, capture_output=True, text=True,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return text


# --- the steps ------------------------------------------------------------------------------------

def rest(c, label):
    """The head at rest for REST_S seconds."""
    before = c.histogram()
    s0 = c.status()
    with c.meter() as m:
        time.sleep(REST_S)
    s1 = c.status()
    after = c.histogram()
    seconds = (s1["now_unix_ms"] - s0["now_unix_ms"]) / 1000
    nodes = max(1, s1["nodes"]["registered"])
    row = dict(m.result)
    row.update({
        "label": label,
        "heartbeat_interval_ms": s1["heartbeat_interval_ms"],
        "bytes_in_per_node_s": (s1["bytes"]["received"] - s0["bytes"]["received"]) / seconds / nodes,
        "bytes_out_per_node_s": (s1["bytes"]["sent"] - s0["bytes"]["sent"]) / seconds / nodes,
        "heartbeats_per_s": (s1["messages"]["heartbeats_sent"] - s0["messages"]["heartbeats_sent"]) / seconds,
        "heartbeat_p50_ms": None, "heartbeat_p99_ms": None,
    })
    q = histogram_quantiles(before, after)
    if q:
        row["heartbeat_p50_ms"], row["heartbeat_p99_ms"] = q[0] * 1000, q[1] * 1000
    log(f"  at rest, {label}: head {row['head_cpu_pct']:.1f}% CPU, {row['head_rss_mib']:.0f} MiB; "
        f"sim {row['sim_cpu_pct']:.1f}% CPU; {row['bytes_in_per_node_s'] + row['bytes_out_per_node_s']:.0f} B/s per node; "
        f"heartbeat p50/p99 {fmt_ms(row['heartbeat_p50_ms'])}/{fmt_ms(row['heartbeat_p99_ms'])}")
    return row


class DeadWatch:
    """The most nodes DEAD at once while a step runs (the head's /metrics, every second)."""

    def __init__(self, c):
        self.c, self.most, self.nodes, self.done = c, 0, 1, threading.Event()

    def __enter__(self):
        self.base = self.c.node_count("DEAD")
        self.nodes = max(1, self.c.status()["nodes"]["total"])
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def run(self):
        while not self.done.wait(1.0):
            try:
                self.most = max(self.most, self.c.node_count("DEAD") - self.base)
            except (OSError, ValueError, RuntimeError, http.client.HTTPException):
                pass

    def collapse(self):
        if self.most > COLLAPSE_SHARE * self.nodes:
            return f"{self.most} of {self.nodes} nodes declared DEAD: the head fell behind with their heartbeats"
        return None

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


def change(c, label, act, settle, step_timeout=None, kills=False):
    """Runs act() (a config change, a kill), then waits for each of settle's (name, check[,
    poll interval]) in turn, noting the seconds since act; measures the head over the step and
    the route tables' delivery. Nodes declared DEAD meanwhile are counted (unless the step kills
    them itself), and past COLLAPSE_SHARE of them the step ends. Returns the step's row."""
    before = c.histogram()
    row = {"step": label}
    watch = DeadWatch(c)
    with c.meter() as m, watch:
        since = int(time.time() * 1000)
        extra = act() or {}
        row.update(extra)
        abort = None if kills else watch.collapse
        try:
            for name, check, *every in settle:
                wait_for(f"{label}: {name}", check, timeout=step_timeout, interval=every[0] if every else 0.1, abort=abort)
                row[name] = (int(time.time() * 1000) - since) / 1000
                log(f"  {label}: {name.replace('_s', '')} after {row[name]:.2f} s")
            version, _ = wait_for(f"{label}: the final table at every node", c.table_everywhere, timeout=step_timeout,
                                  abort=abort)
            row.update(c.table_report(since, version))
        except (TimeoutError, Collapsed) as error:
            row["error"] = str(error)
            log(f"  {label}: {error}")
            c.unsettled = label
    if not kills:
        row["dead_max"] = watch.most
    after = c.histogram()
    row.update({"head_cpu_pct": m.result["head_cpu_pct"], "sim_cpu_pct": m.result["sim_cpu_pct"],
                "head_rss_peak_mib": m.result["head_rss_peak_mib"], "seconds": m.result["seconds"]})
    q = histogram_quantiles(before, after)
    row["heartbeat_p50_ms"], row["heartbeat_p99_ms"] = (q[0] * 1000, q[1] * 1000) if q else (None, None)
    log(f"  {label}: table at every node after {fmt_s(row.get('to_last_node_s'))}, {row.get('tables', 0)} tables, "
        f"spread p50/p99 {fmt_ms(row.get('spread_p50_ms'))}/{fmt_ms(row.get('spread_p99_ms'))}; head {row['head_cpu_pct']:.0f}% CPU, "
        f"peak {row['head_rss_peak_mib']:.0f} MiB; sim {row['sim_cpu_pct']:.0f}% CPU")
    return row


def join_steps(c):
    rows = []
    for n in NODE_COUNTS:
        if c.unsettled:
            log(f"skipping {n} nodes: '{c.unsettled}' did not settle within {STEP_TIMEOUT_S:.0f} s")
            break
        current = c.status()["nodes"]["total"]
        log(f"{n} nodes: adding {n - current}, then {n * REPLICAS_PER_NODE} replicas")
        started = time.monotonic()
        c.post("/add", {"nodes": n - current})
        wait_for(f"{n} nodes ALIVE", lambda: c.node_count("ALIVE") == n)
        joined = time.monotonic() - started
        log(f"  {n} nodes ALIVE after {joined:.1f} s")
        replicas = n * REPLICAS_PER_NODE
        step = change(c, f"{n} nodes: deploy", lambda: c.deploy(config(replicas // REPLICAS_PER_APP)) and None,
                      [("running_s", lambda: c.settled(replicas))])
        step.update({"nodes": n, "replicas": replicas, "join_s": joined})
        rows.append(step)
        if c.unsettled:
            break
        time.sleep(3)
        with Profiler(c.head.pid, f"rest-{n}") if n == max(NODE_COUNTS) else NoProfile():
            step["rest_500"] = rest(c, f"{n} nodes, heartbeats every 0.5 s")
        c.post("/heartbeat", {"interval_ms": 1000})
        time.sleep(3)
        step["rest_1000"] = rest(c, f"{n} nodes, heartbeats every 1 s (simulator's override)")
        c.post("/heartbeat", {"interval_ms": 0})
        time.sleep(2)
    return rows


class NoProfile:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def kill_steps(c, replicas):
    rows = []
    for mode, offset in (("silent", 0), ("reset", 5)):
        if c.unsettled:
            break
        killed = []

        def act():
            answer = c.post("/kill", {"fraction": KILL_FRACTION, "mode": mode, "offset": offset})
            killed[:] = answer["killed"]
            return {"killed": len(killed)}

        label = f"10% of nodes {mode}"
        log(f"{label}: {c.status()['nodes']['registered']} nodes, {replicas} replicas")
        row = change(c, label, act, [
            ("dead_s", lambda: c.node_count("DEAD") == len(killed)),
            ("replaced_s", lambda: c.settled(replicas, avoid=set(killed))),
        ], kills=True)
        row["mode"] = mode
        rows.append(row)
        rejoin = change(c, f"{label}: rejoin", lambda: {"rejoined": len(c.post("/rejoin", {})["rejoined"])},
                        [("alive_s", lambda: c.node_count("DEAD") == 0 and c.node_count("ALIVE") == c.status()["nodes"]["total"])],
                        kills=True)
        rejoin["mode"] = mode
        rows.append(rejoin)
        time.sleep(2)
    return rows


def rolling_update(c, replicas):
    apps = replicas // REPLICAS_PER_APP
    log(f"rolling update: a new env for {apps} deployments, {replicas} replicas")
    with Profiler(c.head.pid, "rolling-update"):
        row = change(c, "rolling update", lambda: c.deploy(config(apps, version="2")) and None,
                     [("running_s", lambda: c.settled(replicas))])
    row["replicas"] = replicas
    return row


def autoscale(c):
    log(f"autoscaling: the config becomes one autoscaled deployment ({AUTOSCALE_MIN}..{AUTOSCALE_MAX})")
    c.post("/load", {"per_replica": 0})

    def running():
        deployment = c.applications().get("auto", {}).get("deployments", {}).get("A", {})
        return sum(1 for r in deployment.get("replicas", []) if r["state"] == "RUNNING"), deployment.get("target_replicas")

    first = change(c, "autoscaled deployment replaces the others", lambda: c.deploy(autoscaled_config()) and None,
                   [("running_s", lambda: c.settled(AUTOSCALE_MIN))])
    up = change(c, f"autoscale {AUTOSCALE_MIN} -> {AUTOSCALE_MAX}",
                lambda: c.post("/load", {"app": "auto", "deployment": "A", "per_replica": 50}) and None,
                [("target_s", lambda: running()[1] == AUTOSCALE_MAX, 0.5), ("running_s", lambda: c.settled(AUTOSCALE_MAX))])
    down = change(c, f"autoscale {AUTOSCALE_MAX} -> {AUTOSCALE_MIN}",
                  lambda: c.post("/load", {"app": "auto", "deployment": "A", "per_replica": 0}) and None,
                  [("target_s", lambda: running()[1] == AUTOSCALE_MIN, 0.5), ("running_s", lambda: c.settled(AUTOSCALE_MIN))])
    return [first, up, down]


# --- the report -----------------------------------------------------------------------------------

def fmt_ms(v):
    return "n/a" if v is None else (f"{v:.1f} ms" if v < 1000 else f"{v / 1000:.2f} s")


def fmt_s(v):
    return "–" if v is None else f"{v:.2f} s"


def fmt_pct(v):
    return "–" if v is None else f"{v:.1f}%"


def fmt_b(v):
    return "–" if v is None else f"{v:.0f}"


def markdown(r):
    lines = [
        f"Control plane at scale, {r['date']}, release build {r['commit']}, {r['cores']} cores "
        f"(load average {r['load_before']:.1f} → {r['load_after']:.1f}){' — quick run' if r['quick'] else ''}. "
        f"One `serve-head --num-cpus 0` and one `serve-control-sim --tables {r['sim_tables']} --threads {r['sim_threads']}` "
        f"(nodes of {CPUS_PER_NODE} CPUs, {REPLICAS_PER_NODE} `echo` replicas each, SPREAD), heartbeat timeout "
        f"{r.get('heartbeat_timeout_s', HEARTBEAT_TIMEOUT_S):g} s; at-rest windows of {REST_S:.0f} s.",
        "",
        "At rest (head CPU in % of one core; bytes per node are control-plane bytes both ways, HTTP/2 framing included):",
        "",
        "| nodes | replicas | join | deploy → all RUNNING | → table at every node | heartbeats | head CPU | head RSS | sim CPU | B/s per node | heartbeat p50 / p99 |",
        "| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for s in r["join"]:
        for key, every in (("rest_500", "0.5 s"), ("rest_1000", "1 s")):
            x = s.get(key)
            if not x:
                continue
            first = key == "rest_500"
            note = f" (run {s['merged_from']}: heartbeat timeout {s['heartbeat_timeout_s']:g} s)" if first and s.get("merged_from") else ""
            lines.append(
                f"| {str(s['nodes']) + note if first else ''} | {s['replicas'] if first else ''} | {fmt_s(s['join_s']) if first else ''} | "
                f"{fmt_s(s.get('running_s')) if first else ''} | {fmt_s(s.get('to_last_node_s')) if first else ''} | every {every} | "
                f"{fmt_pct(x['head_cpu_pct'])} | {x['head_rss_mib']:.0f} MiB | {fmt_pct(x['sim_cpu_pct'])} | "
                f"{fmt_b(x['bytes_in_per_node_s'] + x['bytes_out_per_node_s'])} | "
                f"{fmt_ms(x['heartbeat_p50_ms'])} / {fmt_ms(x['heartbeat_p99_ms'])} |")
    lines += [
        "",
        "Changes (from the change, or the kill, to each point; the tables made meanwhile and their delivery spread from the "
        "first node to the last; head and simulator CPU over the whole step):",
        "",
        "| step | nodes DEAD / ALIVE | target reached | replicas RUNNING | table at every node | tables | spread p50 / p99 | head CPU | head peak RSS | sim CPU | heartbeat p50 / p99 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    steps = (r["join"] + r.get("extra", []) + ([r["rolling"]] if r.get("rolling") else []) + r.get("kills", [])
             + r.get("autoscale", []) + r.get("merged_steps", []))
    for s in steps:
        if "head_cpu_pct" not in s:
            continue
        nodes = s.get("dead_s", s.get("alive_s"))
        running = s.get("replaced_s", s.get("running_s"))
        dead = f"; {s['dead_max']} nodes declared DEAD" if s.get("dead_max") else ""
        merged = (f" (run {s['merged_from']}: heartbeat timeout {s['heartbeat_timeout_s']:g} s)"
                  if s.get("merged_from") else "")
        lines.append(
            f"| {s['step']}{merged}{' (' + s['error'] + ')' if s.get('error') else ''}{dead} | {fmt_s(nodes)} | {fmt_s(s.get('target_s'))} | "
            f"{fmt_s(running)} | {fmt_s(s.get('to_last_node_s'))} | {s.get('tables', '–')} | "
            f"{fmt_ms(s.get('spread_p50_ms'))} / {fmt_ms(s.get('spread_p99_ms'))} | {fmt_pct(s['head_cpu_pct'])} | "
            f"{s['head_rss_peak_mib']:.0f} MiB | {fmt_pct(s['sim_cpu_pct'])} | "
            f"{fmt_ms(s.get('heartbeat_p50_ms'))} / {fmt_ms(s.get('heartbeat_p99_ms'))} |")
    largest = max((s for s in r["join"] if s.get("rest_500")), key=lambda s: s["nodes"], default=None)
    if largest:
        x = largest["rest_500"]
        kill = next((k for k in r.get("kills", []) + r.get("merged_steps", []) if k.get("mode") == "silent" and "replaced_s" in k), None)
        spreads = [s["spread_p99_ms"] for s in steps if s.get("spread_p99_ms") is not None]
        kill_timeout = (kill or {}).get("heartbeat_timeout_s", r.get("heartbeat_timeout_s", HEARTBEAT_TIMEOUT_S))
        lines += [
            "",
            f"Issue 16's targets, at {largest['nodes']} nodes: head CPU at rest ≤ 20% of one core: "
            f"{fmt_pct(x['head_cpu_pct'])} ({'met' if x['head_cpu_pct'] <= 20 else 'not met'}); RSS at rest ≤ 300 MiB: "
            f"{x['head_rss_mib']:.0f} MiB ({'met' if x['head_rss_mib'] <= 300 else 'not met'}); a table at every node in ≤ 1 s p99: "
            f"worst step p99 {fmt_ms(max(spreads) if spreads else None)} "
            f"({'met' if spreads and max(spreads) <= 1000 else 'not met'}); 10% silent loss re-placed within the heartbeat "
            f"timeout + 1 s: {fmt_s(kill['replaced_s']) if kill else '–'} with a {kill_timeout:g} s timeout "
            f"({'met' if kill and kill['replaced_s'] <= kill_timeout + 1 else 'not met'}).",
        ]
    if r.get("skipped"):
        lines += ["", f"Not run: {', '.join(r['skipped'])} (a step before did not settle)."]
    if r.get("error"):
        lines += ["", f"The run ended early: {r['error']}."]
    lines += ["", f"Head CPU at rest against node count: `{os.path.basename(r['plot'])}`."]
    return "\n".join(lines) + "\n"


def plot_cpu(r, path):
    """Head CPU at rest against node count, a line per heartbeat interval and the issue's 20%
    target (drawn by serve-plot: benchmarks/serve_plot.py)."""
    rows = sorted(r["join"], key=lambda s: s["nodes"])
    def points(key):
        return [[s["nodes"], (s.get(key) or {}).get("head_cpu_pct")] for s in rows if (s.get(key) or {}).get("head_cpu_pct") is not None]
    counts = [s["nodes"] for s in rows]
    chart = {
        "title": "serve-head CPU at rest against simulated nodes (10 replicas each)",
        "panels": [{
            "height": 260,
            "x": {"label": "simulated nodes", "min": 0, "integer": True},
            "y": {"label": "head CPU, % of one core", "min": 0},
            "series": [
                {"name": "heartbeats every 0.5 s", "kind": "line", "color": "#3182bd", "points": points("rest_500")},
                {"name": "heartbeats every 1 s", "kind": "line", "color": "#9ecae1", "points": points("rest_1000")},
                {"name": "target (20%)", "kind": "line", "color": "#d62728", "dash": "6 4",
                 "points": [[0, 20], [max(counts + [1000]), 20]]},
            ],
        }],
    }
    serve_plot.draw(chart, path)


def write_readme_section(text):
    body = open(README).read()
    section = f"{BEGIN}\n{text}{END}\n"
    if BEGIN in body and END in body:
        body = body[:body.index(BEGIN)] + section + body[body.index(END) + len(END) + 1:]
    else:
        body = body.rstrip("\n") + "\n\n" + section
    open(README, "w").write(body)


def main():
    if REPORT:
        r = json.load(open(REPORT))
        merge(r, filter(None, (MERGE or "").split(",")))
        return write(r)
    if os.environ.get("SKIP_BUILD") != "1":
        subprocess.run(["swift", "build", "-c", "release", "--static-swift-stdlib"], cwd=ROOT, check=True)
    # A thousand nodes are a thousand sockets on each side; the children inherit the limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    r = {"date": time.strftime("%Y-%m-%d"), "commit": commit, "cores": os.cpu_count(), "quick": QUICK,
         "load_before": os.getloadavg()[0], "node_counts": NODE_COUNTS, "sim_tables": SIM_TABLES, "sim_threads": SIM_THREADS,
         "join": [], "kills": [], "autoscale": []}
    r["heartbeat_timeout_s"] = HEARTBEAT_TIMEOUT_S
    failure = None
    with tempfile.TemporaryDirectory(prefix="bench-control-plane-") as work:
        c = Cluster(work)
        try:
            r["join"] = join_steps(c)
            replicas = r["join"][-1]["replicas"] if r["join"] else 0
            for name, step in (("rolling", rolling_update), ("kills", kill_steps), ("autoscale", autoscale)):
                if not CHANGES:
                    continue
                if c.unsettled:
                    log(f"skipping {name}: '{c.unsettled}' did not settle")
                    r["skipped"] = r.get("skipped", []) + [name]
                    continue
                r[name] = step(c, replicas) if name != "autoscale" else step(c)
        except BaseException as error:  # the results so far are written all the same
            failure = error
            r["error"] = repr(error)
            print(c.logs(), file=sys.stderr)
        finally:
            r["sim_final"] = {k: v for k, v in c.status().items() if k != "tables"} if c.sim.poll() is None else None
            c.stop()
    r["load_after"] = os.getloadavg()[0]
    merge(r, filter(None, (MERGE or "").split(",")))
    write(r, failure)


def merge(r, paths):
    """Adds other runs' rows to r, each marked with its run: join rows for node counts this run
    did not measure at rest (a join step here that never got to rest moves to r["extra"], shown
    with the changes), and their change steps."""
    for path in paths:
        other = json.load(open(path))
        mark = lambda s: dict(s, merged_from=s.get("merged_from", os.path.basename(path)),
                              heartbeat_timeout_s=s.get("heartbeat_timeout_s", other.get("heartbeat_timeout_s")))
        rested = {s["nodes"] for s in r["join"] if s.get("rest_500")}
        for s in other["join"]:
            if s["nodes"] in rested or not s.get("rest_500"):
                continue
            r["extra"] = r.get("extra", []) + [x for x in r["join"] if x["nodes"] == s["nodes"]]
            r["join"] = [x for x in r["join"] if x["nodes"] != s["nodes"]] + [mark(s)]
            rested.add(s["nodes"])
        for name in ("rolling", "kills", "autoscale"):
            steps = other.get(name) or []
            steps = [steps] if isinstance(steps, dict) else steps
            r["merged_steps"] = r.get("merged_steps", []) + [mark(s) for s in steps]
    r["join"].sort(key=lambda s: s["nodes"])


def write(r, failure=None):
    os.makedirs(RESULTS, exist_ok=True)
    name = f"control-plane-{TAG or 'latest'}"
    r["plot"] = os.path.join(RESULTS, "control-plane-cpu.svg")
    text = markdown(r)
    open(os.path.join(RESULTS, name + ".md"), "w").write(text)
    json.dump(r, open(os.path.join(RESULTS, name + ".json"), "w"), indent=1, default=str)
    if not TAG:
        plot_cpu(r, r["plot"])
        write_readme_section(text)
    print(text)
    if failure:
        raise failure


if __name__ == "__main__":
    main()
