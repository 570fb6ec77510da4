#!/usr/bin/env python3
"""`make bench`: swift-serve beside Ray Serve and a single-hop nginx, on this machine, in one run.

    python3 benchmarks/bench.py              # the whole suite (about half an hour on 2 cores)
    BENCH_QUICK=1 python3 benchmarks/bench.py  # a few minutes: 2 s wrk runs, one Ray start-up

Knobs (environment): ROUNDS (3), DURATION (wrk seconds: 5, quick 2), SKIP_RAY=1 (both Ray modes),
SKIP_RAY_HAPROXY=1, SKIP_BUILD=1, SERVE_BIN (the binaries' folder: .build/release), RAY_VENV
(.bench-ray-venv), BENCH_TAG (suffix of the JSON's name), SKIP_WIRE=1, SKIP_AUTOSCALING=1, and
BENCH_PARTS (a comma-separated subset of embedded, head+worker, worker-proxy, proxy-ab, ray,
ray-haproxy, command, head-kill, cpu-load; default all) to measure some rows only.

Systems, each measured the same way:
- swift-serve, embedded: one `serve-head --config ... --num-cpus 4` (proxy, controller and
  replicas in one process; the proxy calls its replicas in process);
- swift-serve, head + 1 worker: `serve-head --num-cpus 0` and `serve-worker --num-cpus 4`, load on
  the head's proxy (an HTTP/2 stream to the worker per request);
- swift-serve, worker proxy: the same two processes, the worker with `--http-port`, load on the
  worker's own proxy (its replica local, called in process);
- swift-serve, proxy A→B: `serve-head --num-cpus 0`, worker A `--num-cpus 0 --http-port` (a proxy
  only) and worker B with the replicas (and its own `--http-port`), load on A's proxy (no h2load);
- Ray Serve from PyPI (benchmarks/bench_ray.py, ray.init(num_cpus=4)), installed into RAY_VENV
  when missing, in its default mode (Python proxy) and in its throughput-optimized mode with
  HAProxy as the ingress (RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_HA_PROXY=1); when it
  cannot be installed or started, the table says so;
- nginx answering the same fixed body itself (one hop, 2 workers, access log off). nginx runs
  through the whole suite, and every swift-serve and Ray measurement is interleaved with the same
  measurement of nginx, so each ratio comes from runs minutes, not hours, apart.

Measurements: wrk (-t 2, keep-alive, --latency) on the no-op deployment (`echo`, 1 then 2
replicas) at 8, 32 and 64 connections; h2load on the h2c ingress (and nginx's h2c port); per-
request overhead = p50 at 1 connection of a 10 ms `sleep` deployment minus 10 ms; start-up = from
launching the binaries to the first 200 of a 1-replica deployment; memory = total RSS of every
process of the runtime (the launched processes, their sessions and descendants), idle with the
one deployment 2 s after its first 200, and the peak while wrk drives 64 connections. Medians of
ROUNDS runs. Then two scenarios of their own:
- a command replica (examples/model.py, a Python HTTP/1.1 server) behind a worker's proxy, against
  a second nginx proxying to the same child process (found through /proc: its PORT) with keep-alive
  upstream connections, and against the child answered directly; wrk at 8 and 32 connections,
  interleaved;
- the head SIGKILLed while 16 closed-loop clients (threads, keep-alive http.client) load a worker's
  proxy, started again 10 s later (same ports, state dir, token): requests failed, and the times
  from the restart to the admin API answering, to the worker ALIVE with its proxy HEALTHY, and to a
  new application (deployed on the new head as soon as it answers) on the worker's /-/routes;
- echo latency beside CPU-bound replicas (benchmarks/cpu_load.py): the echo p50 with and without
  16 clients keeping two `cpu` replicas busy, on one embedded head.
Then benchmarks/wire and benchmarks/autoscaling (their own tables).

Writes benchmarks/results/<date>.json, benchmarks/results/bench-latest.md, the plots
benchmarks/results/bench-*.svg, and the latest section of benchmarks/README.md.
"""
import datetime
import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.chdir(ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import bench_report  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK", "0") == "1"
ROUNDS = int(os.environ.get("ROUNDS", "3"))
DURATION = int(os.environ.get("DURATION", "2" if QUICK else "5"))
CONNECTIONS = [8, 32, 64]
REPLICAS = [1, 2]
COMMAND_CONNECTIONS = [8, 32]
HEAD_KILL_CLIENTS, HEAD_DOWN_S = 16, 10
H2_CONNECTIONS, H2_STREAMS = 8, 16
STARTUP_ROUNDS = 3
RAY_STARTUP_ROUNDS = 1 if QUICK else 3
SKIP_RAY = os.environ.get("SKIP_RAY", "0") == "1"
SKIP_RAY_HAPROXY = os.environ.get("SKIP_RAY_HAPROXY", "0") == "1"
RAY_DEFAULT, RAY_HAPROXY = "Ray Serve", "Ray Serve (HAProxy)"
# BENCH_PARTS: a comma-separated subset of embedded, head+worker, worker proxy, proxy A→B (or proxy-ab),
# Ray Serve, Ray Serve (HAProxy) (or ray, ray-haproxy), command, head-kill, cpu-load; default all.
PARTS = {p.strip() for p in os.environ.get("BENCH_PARTS", "").split(",") if p.strip()}
ALIASES = {"proxy-ab": "proxy A→B", "worker-proxy": "worker proxy", "ray": RAY_DEFAULT, "ray-haproxy": RAY_HAPROXY}


def part(name):
    return not PARTS or name in {ALIASES.get(p, p) for p in PARTS}
VENV = os.environ.get("RAY_VENV", ".bench-ray-venv")
SLEEP_MS = 10
TOKEN = "bench-token"
BODY = "/bench"   # what `echo` answers for /echo/bench, and what nginx and Ray answer
RELEASE = os.environ.get("SERVE_BIN", ".build/release")   # another build's binaries, to compare (with SKIP_BUILD=1)
T0 = time.monotonic()


def log(msg):
    print(f"[bench {time.monotonic() - T0:6.0f}s] {msg}", file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get(port, path, timeout=2.0):
    """(status, body) of one GET, or (None, error)."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.request("GET", path)
        r = c.getresponse()
        body = r.read().decode(errors="replace")
        c.close()
        return r.status, body
    except (OSError, http.client.HTTPException) as e:
        return None, str(e)


def first_200(port, path, started, timeout=300.0, procs=()):
    """Seconds from `started` to the first 200 of GET path, polling every 5 ms."""
    while time.monotonic() - started < timeout:
        status, _ = get(port, path, timeout=5.0)
        if status == 200:
            return time.monotonic() - started
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[0]} exited with {p.returncode} before answering")
        time.sleep(0.005)
    raise RuntimeError(f"no 200 from :{port}{path} within {timeout} s")


def check_body(port, path, want):
    status, body = get(port, path)
    if status != 200 or body != want:
        raise RuntimeError(f"GET :{port}{path} answered {status} {body!r}, expected 200 {want!r}")


# --- processes and memory ---------------------------------------------------------------------------

class Processes:
    """Processes started in their own sessions, so that all they start can be found and stopped."""

    def __init__(self):
        self.procs = []

    def start(self, args, log_path, **kw):
        out = open(log_path, "ab")
        p = subprocess.Popen(args, stdout=kw.pop("stdout", out), stderr=out, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def tree(self):
        """pid -> rss bytes of the launched processes, everything in their sessions, and their descendants."""
        table = {}
        page = os.sysconf("SC_PAGE_SIZE")
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                stat = open(f"/proc/{d}/stat").read()
                fields = stat[stat.rindex(")") + 2:].split()
                rss = int(open(f"/proc/{d}/statm").read().split()[1]) * page
                table[int(d)] = (int(fields[1]), int(fields[3]), rss)   # ppid, session, rss
            except (OSError, ValueError, IndexError):
                continue
        sessions = {p.pid for p in self.procs if p.poll() is None}
        members = {pid for pid, (_, sid, _) in table.items() if sid in sessions or pid in sessions}
        grew = True
        while grew:
            more = {pid for pid, (ppid, _, _) in table.items() if ppid in members and pid not in members}
            members |= more
            grew = bool(more)
        return {pid: table[pid][2] for pid in members}

    def rss_mib(self):
        tree = self.tree()
        return sum(tree.values()) / 2**20, len(tree)

    def stop(self, timeout=20.0):
        pids = set(self.tree())
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for pid in pids | {p.pid for p in self.procs}:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.procs = []


class RSSSampler:
    """Peak total RSS of a process tree while a load runs (sampled every 250 ms)."""

    def __init__(self, procs):
        self.procs, self.peak, self.done = procs, 0.0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.done.wait(0.25):
            self.peak = max(self.peak, self.procs.rss_mib()[0])

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


# --- load generators ----------------------------------------------------------------------------------

UNITS = {"us": 1, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def wrk(port, path, connections):
    threads = min(2, connections)
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{DURATION}s", "--latency",
                          f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True).stdout

    def pct(p):
        m = re.search(rf"^\s*{p}%\s+([\d.]+)(us|ms|s|m|h)\s*$", out, re.M)
        return float(m.group(1)) * UNITS[m.group(2)]

    try:
        rps = float(re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M).group(1))
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(int(x) for x in sock.groups()) if sock else 0)
        return {"rps": rps, "p50_us": pct(50), "p99_us": pct(99), "errors": errors}
    except (AttributeError, ValueError):
        raise RuntimeError(f"could not read wrk's output against :{port}{path}:\n{out}")


def h2load(port, path, work):
    logf = os.path.join(work, "h2load.log")
    if os.path.exists(logf):
        os.unlink(logf)
    out = subprocess.run(["h2load", "-t", "1", "-c", str(H2_CONNECTIONS), "-m", str(H2_STREAMS), "-D", str(DURATION),
                          f"--log-file={logf}", f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True).stdout
    m = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    f = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    if not m or not f:
        raise RuntimeError(f"could not read h2load's output against :{port}{path}:\n{out}")
    lat = sorted(int(line.split("\t")[2]) for line in open(logf) if line.strip())
    pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else 0
    return {"rps": float(m.group(1)), "p50_us": pct(0.50), "p99_us": pct(0.99), "errors": int(f.group(2)) + int(f.group(3))}


# --- nginx ----------------------------------------------------------------------------------------------

class Nginx:
    name = "nginx"

    def __init__(self, work):
        self.dir = os.path.join(work, "nginx")
        os.makedirs(os.path.join(self.dir, "logs"), exist_ok=True)
        self.port, self.h2_port = free_port(), free_port()
        self.procs = Processes()
        temp = "\n".join(f"  {k}_temp_path {self.dir}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        open(os.path.join(self.dir, "nginx.conf"), "w").write(f"""daemon off;
master_process on;
worker_processes 2;
pid {self.dir}/nginx.pid;
error_log {self.dir}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  http2_max_requests 10000000;
{temp}
  server {{
    listen 127.0.0.1:{self.port};
    listen 127.0.0.1:{self.h2_port} http2;
    default_type text/plain;
    location / {{ return 200 "{BODY}"; }}
  }}
}}
""")

    def start(self):
        nginx = "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else "nginx"
        started = time.monotonic()
        self.procs.start([nginx, "-p", self.dir, "-c", f"{self.dir}/nginx.conf", "-e", f"{self.dir}/logs/error.log"],
                         os.path.join(self.dir, "nginx.out"))
        self.startup_s = first_200(self.port, "/echo/bench", started, procs=self.procs.procs)
        time.sleep(1)
        self.idle_rss_mib = self.procs.rss_mib()[0]
        check_body(self.port, "/echo/bench", BODY)


# --- the systems under test ---------------------------------------------------------------------------

def config(echo_replicas, with_sleep):
    text = f"""applications:
  - name: echo
    route_prefix: /echo
    deployments:
      - name: Echo
        handler: echo
        num_replicas: {echo_replicas}
        max_ongoing_requests: 100
"""
    if with_sleep:
        text += f"""  - name: sleep
    route_prefix: /sleep
    deployments:
      - name: Sleep
        handler: sleep
        user_config: {{ms: {SLEEP_MS}}}
        max_ongoing_requests: 100
"""
    return text


class SwiftServe:
    """One swift-serve topology; `port` is where the load goes.

    - embedded: one serve-head hosting the replicas (its proxy calls them in process);
    - head+worker: serve-head --num-cpus 0 and one worker with the replicas, load on the head's proxy;
    - worker proxy: the same two processes, load on the worker's own proxy (replica local, in process);
    - proxy A→B: serve-head --num-cpus 0, worker A --num-cpus 0 (a proxy only) and worker B with the
      replicas, load on A's proxy (every request an HTTP/2 stream from A to B).
    """
    def __init__(self, work, topology, tag=""):
        self.work, self.topology, self.tag = work, topology, tag
        self.name = f"swift-serve {topology}"
        self.procs = Processes()
        self.n = 0

    def head_args(self, d):
        return [f"{RELEASE}/serve-head", "--host", "127.0.0.1", "--port", str(self.cluster),
                "--http-host", "127.0.0.1", "--http-port", str(self.head_port), "--admin-port", str(self.admin),
                "--state-dir", os.path.join(d, "state"), "--token", TOKEN]

    def worker(self, d, name, cpus, http_port):
        """A worker whose proxy listens on 127.0.0.1:http_port (0: any port; it is not the one measured)."""
        return self.procs.start([f"{RELEASE}/serve-worker", "--address", f"127.0.0.1:{self.cluster}", "--token", TOKEN,
                                 "--num-cpus", str(cpus), "--listen-host", "127.0.0.1", "--node-address", "127.0.0.1",
                                 "--http-host", "127.0.0.1", "--http-port", str(http_port)],
                                os.path.join(d, f"{name}.log"))

    def launch(self):
        """Starts the binaries with the one no-op deployment; returns the launch time."""
        self.n += 1
        d = os.path.join(self.work, f"{re.sub(r'[^A-Za-z0-9]', '', self.topology)}{self.tag}-{self.n}")
        os.makedirs(d)
        self.dir = d
        self.head_port, self.admin, self.cluster = free_port(), free_port(), free_port()
        self.port = self.head_port
        cfg = os.path.join(d, "config.yaml")
        open(cfg, "w").write(config(1, False))
        head = self.head_args(d) + ["--config", cfg]
        started = time.monotonic()
        if self.topology == "embedded":
            self.head = self.procs.start(head + ["--num-cpus", "4"], os.path.join(d, "head.log"))
        else:
            self.head = self.procs.start(head + ["--num-cpus", "0"], os.path.join(d, "head.log"))
            if self.topology == "head+worker":
                self.worker(d, "worker", 4, 0)
            elif self.topology == "worker proxy":
                self.port = free_port()
                self.worker(d, "worker", 4, self.port)
            elif self.topology == "proxy A→B":
                self.port = free_port()
                self.worker(d, "worker-a", 0, self.port)
                self.worker(d, "worker-b", 4, free_port())
            else:
                raise ValueError(self.topology)
        return started

    def logs(self):
        out = []
        for f in ("head.log", "worker.log", "worker-a.log", "worker-b.log"):
            p = os.path.join(self.dir, f)
            if os.path.exists(p):
                out.append(f"--- {f} ---\n" + open(p, errors="replace").read()[-4000:])
        return "\n".join(out)

    def deploy(self, echo_replicas):
        cfg = os.path.join(self.dir, f"config-{echo_replicas}.yaml")
        open(cfg, "w").write(config(echo_replicas, True))
        subprocess.run([f"{RELEASE}/serve", "deploy", cfg, "--address", f"http://127.0.0.1:{self.admin}"],
                       check=True, capture_output=True, env={**os.environ, "SERVE_TOKEN": TOKEN})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=5)
                c.request("GET", "/api/serve/applications/")
                apps = json.loads(c.getresponse().read())["applications"]
                c.close()
                reps = apps["echo"]["deployments"]["Echo"]["replicas"]
                if (all(apps.get(a, {}).get("status") == "RUNNING" for a in ("echo", "sleep"))
                        and len(reps) == echo_replicas and all(r["state"] == "RUNNING" for r in reps)):
                    # The proxy measured may be a worker's: wait for the head's table to reach it.
                    first_200(self.port, "/sleep", time.monotonic(), timeout=30)
                    return
            except (OSError, KeyError, ValueError, http.client.HTTPException):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name}: echo never reached {echo_replicas} RUNNING replicas")

    def stop(self):
        self.procs.stop()


class RayServe:
    """Ray Serve from RAY_VENV (benchmarks/bench_ray.py); `env` selects a mode, e.g. its HAProxy ingress."""

    def __init__(self, work, name="Ray Serve", env=None):
        self.work, self.procs, self.n = work, Processes(), 0
        self.name, self.env = name, env or {}
        self.python = os.path.join(VENV, "bin", "python")

    def launch(self):
        self.n += 1
        self.port = free_port()
        self.log = os.path.join(self.work, f"{re.sub(r'[^A-Za-z0-9]', '', self.name)}-{self.n}.log")
        started = time.monotonic()
        self.proc = self.procs.start([self.python, "benchmarks/bench_ray.py", str(self.port)], self.log,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, **self.env})
        return started

    def logs(self):
        return open(self.log, errors="replace").read()[-4000:]

    def command(self, line, want):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        while True:
            got = self.proc.stdout.readline()
            if not got:
                raise RuntimeError(f"Ray Serve's driver exited while waiting for {want!r}")
            if got.strip() == want:
                return

    def deploy(self, echo_replicas):
        if not getattr(self, "sleep_deployed", False):
            self.command("sleep", "ok")
            self.sleep_deployed = True
        self.command(f"replicas {echo_replicas}", "ok")
        check_body(self.port, "/sleep", "slept")

    def stop(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(60)
        except (subprocess.TimeoutExpired, OSError, ValueError):
            pass
        self.procs.stop()
        self.sleep_deployed = False


def ray_available():
    """None when Ray Serve can be run, else why not (installing it into VENV first if missing)."""
    py = os.path.join(VENV, "bin", "python")
    ok = lambda: os.path.exists(py) and subprocess.run([py, "-c", "import ray.serve, starlette"], capture_output=True).returncode == 0
    if ok():
        return None
    log(f"installing ray[serve] from PyPI into {VENV} (a few minutes)...")
    try:
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([os.path.join(VENV, "bin", "pip"), "install", "-q", "ray[serve]"], check=True)
    except (subprocess.CalledProcessError, OSError) as e:
        return f"pip install of ray[serve] into {VENV} failed ({e})"
    return None if ok() else f"ray.serve still not importable from {VENV}"


# --- the procedure, the same for every system -----------------------------------------------------------

def measure(system, nginx, work, startup_rounds, h2=True):
    res = {"startup_s": [], "idle_rss_mib": [], "idle_processes": [], "throughput": [], "load_start": os.getloadavg()}
    log(f"{system.name}: start-up to first 200 ({startup_rounds}x), idle memory")
    for i in range(startup_rounds):
        started = system.launch()
        try:
            res["startup_s"].append(first_200(system.port, "/echo/bench", started, procs=system.procs.procs))
        except RuntimeError:
            log(system.logs())
            raise
        time.sleep(2)
        rss, count = system.procs.rss_mib()
        res["idle_rss_mib"].append(rss)
        res["idle_processes"].append(count)
        log(f"  start-up {res['startup_s'][-1]:.3f} s, idle RSS {rss:.1f} MiB in {count} processes")
        if i < startup_rounds - 1:
            system.stop()
    check_body(system.port, "/echo/bench", BODY)
    system.deploy(1)

    log(f"{system.name}: per-request overhead (sleep {SLEEP_MS} ms, 1 connection)")
    wrk(system.port, "/sleep", 1)   # warm-up
    res["overhead"] = {"sleep": [], "echo": [], "nginx": []}
    for _ in range(ROUNDS):
        res["overhead"]["sleep"].append(wrk(system.port, "/sleep", 1))
        res["overhead"]["echo"].append(wrk(system.port, "/echo/bench", 1))
        res["overhead"]["nginx"].append(wrk(nginx.port, "/echo/bench", 1))
    log(f"  sleep p50 {statistics.median(r['p50_us'] for r in res['overhead']['sleep']) / 1000:.2f} ms")

    for replicas in REPLICAS:
        if replicas != 1:
            system.deploy(replicas)
        wrk(system.port, "/echo/bench", 8)   # warm-up
        for conns in CONNECTIONS:
            row = {"replicas": replicas, "connections": conns, "runs": [], "nginx": []}
            for _ in range(ROUNDS):
                if replicas == 1 and conns == max(CONNECTIONS):
                    with RSSSampler(system.procs) as s:
                        row["runs"].append(wrk(system.port, "/echo/bench", conns))
                    res.setdefault("load_rss_mib", []).append(s.peak)
                else:
                    row["runs"].append(wrk(system.port, "/echo/bench", conns))
                row["nginx"].append(wrk(nginx.port, "/echo/bench", conns))
            res["throughput"].append(row)
            med = statistics.median(r["rps"] for r in row["runs"])
            nmed = statistics.median(r["rps"] for r in row["nginx"])
            log(f"  {replicas} replica(s), {conns} connections: {med:.0f} req/s (nginx {nmed:.0f}, {med / nmed:.3f}x)")

    if h2:
        log(f"{system.name}: h2load, {H2_CONNECTIONS} connections x {H2_STREAMS} streams (h2c)")
        res["h2"] = {"runs": [], "nginx": []}
        for _ in range(ROUNDS):
            res["h2"]["runs"].append(h2load(system.port, "/echo/bench", work))
            res["h2"]["nginx"].append(h2load(nginx.h2_port, "/echo/bench", work))
    res["load_end"] = os.getloadavg()
    system.stop()
    return res


# --- a command replica through its node's proxy, against nginx proxying to the same child --------------

MODEL_PATH = "/predict?x=3"   # what the child answers in both paths (the proxy strips /model)


def command_config():
    return f"""applications:
  - name: model
    route_prefix: /model
    deployments:
      - name: Model
        command: [{json.dumps(sys.executable)}, {json.dumps(os.path.join(ROOT, "examples", "model.py"))}]
        health_path: /healthz
        num_replicas: 1
        max_ongoing_requests: 100
"""


def child_port(procs, marker="model.py"):
    """The PORT of the one process in the tree whose command line names `marker` (the replica's child)."""
    for pid in procs.tree():
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            if any(a.endswith(marker.encode()) for a in cmdline):
                env = dict(x.split(b"=", 1) for x in open(f"/proc/{pid}/environ", "rb").read().split(b"\0") if b"=" in x)
                return pid, int(env[b"PORT"])
        except (OSError, KeyError, ValueError):
            continue
    raise RuntimeError(f"no process running {marker} under the worker")


class NginxProxy:
    """nginx as a one-hop reverse proxy to 127.0.0.1:upstream (keep-alive upstream connections)."""

    def __init__(self, work, upstream):
        self.dir = os.path.join(work, "nginx-proxy")
        os.makedirs(os.path.join(self.dir, "logs"), exist_ok=True)
        self.port = free_port()
        self.procs = Processes()
        temp = "\n".join(f"  {k}_temp_path {self.dir}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        open(os.path.join(self.dir, "nginx.conf"), "w").write(f"""daemon off;
master_process on;
worker_processes 2;
pid {self.dir}/nginx.pid;
error_log {self.dir}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
{temp}
  upstream child {{
    server 127.0.0.1:{upstream};
    keepalive 128;
    keepalive_requests 10000000;
  }}
  server {{
    listen 127.0.0.1:{self.port};
    location / {{
      proxy_pass http://child;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
""")

    def start(self):
        nginx = "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else "nginx"
        self.procs.start([nginx, "-p", self.dir, "-c", f"{self.dir}/nginx.conf", "-e", f"{self.dir}/logs/error.log"],
                         os.path.join(self.dir, "nginx.out"))
        first_200(self.port, MODEL_PATH, time.monotonic(), timeout=30, procs=self.procs.procs)


def measure_command(work):
    """A command replica (examples/model.py) behind a worker's proxy, against nginx proxying to the same
    child process and against the child answered directly; interleaved, at COMMAND_CONNECTIONS."""
    log("command replica: head --num-cpus 0 + worker (proxy on its own port), examples/model.py as the replica")
    s = SwiftServe(work, "worker proxy", tag="-command")
    res = {"connections": COMMAND_CONNECTIONS, "rows": [], "load_start": os.getloadavg()}
    proxy = None
    try:
        started = s.launch()
        first_200(s.port, "/echo/bench", started, procs=s.procs.procs)
        open(os.path.join(s.dir, "model.yaml"), "w").write(command_config())
        deploy = subprocess.run([f"{RELEASE}/serve", "deploy", os.path.join(s.dir, "model.yaml"), "--address",
                                 f"http://127.0.0.1:{s.admin}"], capture_output=True, text=True, env={**os.environ, "SERVE_TOKEN": TOKEN})
        if deploy.returncode != 0:
            raise RuntimeError(f"serve deploy of the command replica failed: {deploy.stderr.strip()}")
        try:
            first_200(s.port, "/model" + MODEL_PATH, time.monotonic(), timeout=120, procs=s.procs.procs)
        except RuntimeError:
            log(s.logs())
            raise
        pid, port = child_port(s.procs)
        res["child"] = {"pid": pid, "port": port}
        proxy = NginxProxy(work, port)
        proxy.start()
        log(f"  child pid {pid} on :{port}; nginx → child on :{proxy.port}; worker proxy on :{s.port}")
        targets = {"swift": (s.port, "/model" + MODEL_PATH), "nginx": (proxy.port, MODEL_PATH), "direct": (port, MODEL_PATH)}
        for port_, path in targets.values():
            wrk(port_, path, 8)   # warm-up
        for conns in COMMAND_CONNECTIONS:
            row = {"connections": conns, **{k: [] for k in targets}}
            for _ in range(ROUNDS):
                for k, (port_, path) in targets.items():
                    row[k].append(wrk(port_, path, conns))
            res["rows"].append(row)
            m = {k: statistics.median(r["rps"] for r in row[k]) for k in targets}
            log(f"  {conns} connections: proxy {m['swift']:.0f}, nginx → child {m['nginx']:.0f}, child direct "
                f"{m['direct']:.0f} req/s ({m['swift'] / m['nginx']:.2f}× nginx)")
    finally:
        if proxy:
            proxy.procs.stop()
        s.stop()
    res["load_end"] = os.getloadavg()
    return res


# --- the head SIGKILLed under load on a worker's proxy ------------------------------------------------

class ClosedLoop:
    """`clients` threads, each a keep-alive http.client connection sending GETs back to back; every
    request recorded as (monotonic end, ok, what went wrong)."""

    def __init__(self, port, path, clients):
        self.port, self.path, self.done = port, path, threading.Event()
        self.records = [[] for _ in range(clients)]
        self.threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(clients)]

    def client(self, i):
        out, conn = self.records[i], None
        while not self.done.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", self.path)
                r = conn.getresponse()
                r.read()
                out.append((time.monotonic(), r.status == 200, None if r.status == 200 else f"HTTP {r.status}"))
            except (OSError, http.client.HTTPException) as e:
                out.append((time.monotonic(), False, type(e).__name__))
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.01)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        for t in self.threads:
            t.join(10)

    def all(self):
        return sorted(r for rs in self.records for r in rs)


def admin_json(port, path):
    status, body = get(port, path, timeout=2)
    return json.loads(body) if status == 200 else None


def measure_head_kill(work):
    """Head SIGKILLed while HEAD_KILL_CLIENTS clients load a worker's proxy; HEAD_DOWN_S seconds later it
    is started again (same ports, state dir, token). Counts the requests that failed, and times the new
    head: admin API up, the worker ALIVE with its proxy HEALTHY, and a new application's route on the
    worker's proxy (deployed on the new head as soon as it answers)."""
    log(f"head SIGKILLed under load: {HEAD_KILL_CLIENTS} clients on a worker's proxy, head down {HEAD_DOWN_S} s")
    s = SwiftServe(work, "worker proxy", tag="-headkill")
    res = {"clients": HEAD_KILL_CLIENTS, "down_s": HEAD_DOWN_S, "load_start": os.getloadavg()}
    try:
        started = s.launch()
        first_200(s.port, "/echo/bench", started, procs=s.procs.procs)
        time.sleep(1)
        with ClosedLoop(s.port, "/echo/bench", HEAD_KILL_CLIENTS) as load:
            time.sleep(3)
            t_kill = time.monotonic()
            os.kill(s.head.pid, signal.SIGKILL)
            s.head.wait()
            time.sleep(HEAD_DOWN_S)
            t_restart = time.monotonic()
            s.head = s.procs.start(s.head_args(s.dir) + ["--num-cpus", "0"], os.path.join(s.dir, "head-restarted.log"))
            times, deployed = {}, False
            probe = os.path.join(s.dir, "probe.yaml")
            open(probe, "w").write(config(1, False) + """  - name: probe
    route_prefix: /probe
    deployments:
      - name: Probe
        handler: echo
        num_replicas: 1
""")
            while time.monotonic() - t_restart < 60 and not {"worker_healthy_s", "route_at_proxy_s"} <= times.keys():
                now = time.monotonic() - t_restart
                nodes = admin_json(s.admin, "/api/cluster/nodes")
                if nodes is not None:
                    times.setdefault("admin_up_s", now)
                    if not deployed:
                        deployed = subprocess.run([f"{RELEASE}/serve", "deploy", probe, "--address", f"http://127.0.0.1:{s.admin}"],
                                                  capture_output=True, env={**os.environ, "SERVE_TOKEN": TOKEN}).returncode == 0
                        if deployed:
                            times["deployed_s"] = time.monotonic() - t_restart
                    if any(n.get("state") == "ALIVE" and n.get("proxy_status") == "HEALTHY" for n in nodes.get("nodes", [])):
                        times.setdefault("worker_healthy_s", now)
                if deployed:
                    status, body = get(s.port, "/-/routes")
                    try:
                        if status == 200 and json.loads(body).get("/probe") == "probe":
                            times.setdefault("route_at_proxy_s", time.monotonic() - t_restart)
                    except ValueError:
                        pass
                time.sleep(0.02)
            t_tables = t_restart + times.get("route_at_proxy_s", 60)
            time.sleep(2)
            t_end = time.monotonic()
        recs = load.all()
        t0 = recs[0][0] if recs else t_kill
        window = lambda a, b: [r for r in recs if a <= r[0] < b]
        outage = window(t_kill, t_tables)
        res.update(times)
        res.update({
            "requests": len(recs), "failed": sum(1 for r in recs if not r[1]),
            "outage_requests": len(outage), "outage_failed": sum(1 for r in outage if not r[1]),
            "outage_s": t_tables - t_kill,
            "rps_before": len(window(t0, t_kill)) / max(1e-9, t_kill - t0),
            "rps_head_down": len(window(t_kill, t_restart)) / max(1e-9, t_restart - t_kill),
            "rps_after": len(window(t_tables, t_end)) / max(1e-9, t_end - t_tables),
            "failures": sorted({r[2] for r in recs if not r[1]}),
        })
        log(f"  {res['requests']} requests, {res['failed']} failed ({res['outage_failed']} of {res['outage_requests']} "
            f"between the kill and the new head's table at the proxy); restart → admin {times.get('admin_up_s', -1):.2f} s, "
            f"→ worker HEALTHY {times.get('worker_healthy_s', -1):.2f} s, → new route at the proxy {times.get('route_at_proxy_s', -1):.2f} s")
        if "route_at_proxy_s" not in times:
            log(s.logs())
    finally:
        s.stop()
    res["load_end"] = os.getloadavg()
    return res


def run_script(args, env):
    log(f"running {' '.join(args)}")
    p = subprocess.run(args, env={**os.environ, **env})
    return p.returncode == 0


def main():
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    tree = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"
    if subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "Sources", "Package.swift"],
                      capture_output=True, text=True).stdout.strip():
        tree += " + uncommitted changes in Sources/"
    result = {
        "date": date, "tree": tree, "cores": os.cpu_count(), "quick": QUICK, "rounds": ROUNDS, "duration_s": DURATION,
        "connections": CONNECTIONS, "replicas": REPLICAS, "h2": [H2_CONNECTIONS, H2_STREAMS],
        "load_start": os.getloadavg(), "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "systems": {}, "binaries": RELEASE,
    }
    if os.environ.get("SKIP_BUILD", "0") != "1":
        log("building release binaries (swift build -c release --static-swift-stdlib, as make release)...")
        subprocess.run(["swift", "build", "-c", "release", "--static-swift-stdlib"], check=True)
    if SKIP_RAY:
        ray_status = "skipped (SKIP_RAY=1)"
    elif not (part(RAY_DEFAULT) or part(RAY_HAPROXY)):
        ray_status = "skipped (not in BENCH_PARTS)"
    else:
        ray_status = ray_available()
    if ray_status is None:
        result["ray_version"] = subprocess.run([os.path.join(VENV, "bin", "python"), "-c", "import ray; print(ray.__version__)"],
                                               capture_output=True, text=True).stdout.strip()

    work = tempfile.mkdtemp(prefix="serve-bench-")
    nginx = Nginx(work)
    topologies = [t for t in ("embedded", "head+worker", "worker proxy", "proxy A→B") if part(t)]
    systems = [SwiftServe(work, t) for t in topologies]
    rays = [(RAY_DEFAULT, {}, "ray_status")]
    if SKIP_RAY_HAPROXY:
        result["ray_haproxy_status"] = "skipped (SKIP_RAY_HAPROXY=1)"
    else:
        rays.append((RAY_HAPROXY, {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}, "ray_haproxy_status"))
    try:
        nginx.start()
        result["nginx"] = {"startup_s": nginx.startup_s, "idle_rss_mib": nginx.idle_rss_mib}
        log(f"nginx on :{nginx.port} (h2c :{nginx.h2_port}): start-up {nginx.startup_s:.3f} s, {nginx.idle_rss_mib:.1f} MiB")
        for s in systems:
            # A proxy whose only replica is on another node: throughput and overhead (no h2load).
            result["systems"][s.name] = measure(s, nginx, work, STARTUP_ROUNDS, h2=s.topology != "proxy A→B")
        for name, env, key in rays:
            if ray_status is not None or not part(name):
                result[key] = ray_status or f"skipped (not in BENCH_PARTS)"
                continue
            ray = RayServe(work, name, env)
            try:
                result["systems"][name] = measure(ray, nginx, work, RAY_STARTUP_ROUNDS, h2=False)
                result[key] = None
            except (RuntimeError, subprocess.CalledProcessError) as e:
                result[key] = f"failed: {str(e).splitlines()[0]}"
                log(f"{name} failed: {e}\n{ray.logs()}")
                result.setdefault("ray_logs", {})[name] = ray.logs()
            finally:
                ray.stop()
        if part("command"):
            try:
                result["command"] = measure_command(work)
            except (RuntimeError, subprocess.CalledProcessError) as e:
                result["command_status"] = f"failed: {e}"
                log(f"command replica failed: {e}")
        if part("cpu-load"):
            import cpu_load   # benchmarks/cpu_load.py: echo latency beside CPU-bound replicas
            try:
                result["cpu_load"] = cpu_load.measure(work)
                open("benchmarks/results/cpu-load-latest.md", "w").write(cpu_load.markdown(result["cpu_load"], tree))
            except (RuntimeError, subprocess.CalledProcessError) as e:
                result["cpu_load_status"] = f"failed: {e}"
                log(f"cpu load failed: {e}")
        if part("head-kill"):
            try:
                result["head_kill"] = measure_head_kill(work)
            except (RuntimeError, subprocess.CalledProcessError) as e:
                result["head_kill_status"] = f"failed: {e}"
                log(f"head kill failed: {e}")
    finally:
        for s in systems:
            s.stop()
        nginx.procs.stop()

    if os.environ.get("SKIP_WIRE", "0") != "1":
        env = {"ROUNDS": "3", "REQUESTS": "30000" if QUICK else "100000"}
        result["wire_ok"] = run_script(["benchmarks/wire"], env)
    if os.environ.get("SKIP_AUTOSCALING", "0") != "1":
        env = {"SKIP_BUILD": "1", "BENCH_JSON_DIR": work, "SKIP_RAY": "1" if (QUICK or ray_status) else "0"}
        result["autoscaling_ok"] = run_script(["benchmarks/autoscaling"], env)
        if result["autoscaling_ok"]:
            result["autoscaling"] = {k: json.load(open(os.path.join(work, f"{k}.json")))
                                     for k in ("swift", "ray") if os.path.exists(os.path.join(work, f"{k}.json"))}
        if QUICK or ray_status:
            result["autoscaling_ray_status"] = "skipped in BENCH_QUICK mode" if QUICK else ray_status
    result["load_end"] = os.getloadavg()
    result["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    tag = os.environ.get("BENCH_TAG")
    path = f"benchmarks/results/{date}{'-' + tag if tag else ''}.json"
    json.dump(result, open(path, "w"), indent=1)
    log(f"wrote {path}")
    bench_report.write(result, path)


if __name__ == "__main__":
    main()
