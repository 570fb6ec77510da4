#!/usr/bin/env python3
"""`make bench`: swift-serve beside Ray Serve and a single-hop nginx, on this machine, in one run.

    python3 benchmarks/bench.py              # the whole suite (about half an hour on 2 cores)
    BENCH_QUICK=1 python3 benchmarks/bench.py  # a few minutes: 2 s wrk runs, one Ray start-up

Knobs (environment): ROUNDS (3), DURATION (wrk seconds: 5, quick 2), SKIP_RAY=1, SKIP_BUILD=1,
SERVE_BIN (the binaries' folder: .build/release), RAY_VENV (.bench-ray-venv), BENCH_TAG (suffix of
the JSON's name), SKIP_WIRE=1, SKIP_AUTOSCALING=1.

Systems, each measured the same way:
- swift-serve, embedded: one `serve-head --config ... --num-cpus 4` (ingress, controller and
  replicas in one process; the ingress still reaches the replicas over HTTP/2 on loopback);
- swift-serve, head + 1 worker: `serve-head --num-cpus 0` and `serve-worker --num-cpus 4`;
- Ray Serve from PyPI (benchmarks/bench_ray.py, ray.init(num_cpus=4)), installed into RAY_VENV
  when missing; when it cannot be installed or started, the table says so;
- nginx answering the same fixed body itself (one hop, 2 workers, access log off). nginx runs
  through the whole suite, and every swift-serve and Ray measurement is interleaved with the same
  measurement of nginx, so each ratio comes from runs minutes, not hours, apart.

Measurements: wrk (-t 2, keep-alive, --latency) on the no-op deployment (`echo`, 1 then 2
replicas) at 8, 32 and 64 connections; h2load on the h2c ingress (and nginx's h2c port); per-
request overhead = p50 at 1 connection of a 10 ms `sleep` deployment minus 10 ms; start-up = from
launching the binaries to the first 200 of a 1-replica deployment; memory = total RSS of every
process of the runtime (the launched processes, their sessions and descendants), idle with the
one deployment 2 s after its first 200, and the peak while wrk drives 64 connections. Medians of
ROUNDS runs. Then benchmarks/wire and benchmarks/autoscaling (their own tables).

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
H2_CONNECTIONS, H2_STREAMS = 8, 16
STARTUP_ROUNDS = 3
RAY_STARTUP_ROUNDS = 1 if QUICK else 3
SKIP_RAY = os.environ.get("SKIP_RAY", "0") == "1"
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
    def __init__(self, work, topology):
        self.work, self.topology = work, topology
        self.name = f"swift-serve {topology}"
        self.procs = Processes()
        self.n = 0

    def launch(self):
        """Starts the binaries with the one no-op deployment; returns the launch time."""
        self.n += 1
        d = os.path.join(self.work, f"{self.topology.replace(' ', '')}-{self.n}")
        os.makedirs(d)
        self.dir = d
        self.port, self.admin, self.cluster = free_port(), free_port(), free_port()
        cfg = os.path.join(d, "config.yaml")
        open(cfg, "w").write(config(1, False))
        head = [f"{RELEASE}/serve-head", "--config", cfg, "--host", "127.0.0.1", "--port", str(self.cluster),
                "--http-host", "127.0.0.1", "--http-port", str(self.port), "--admin-port", str(self.admin),
                "--state-dir", os.path.join(d, "state"), "--token", TOKEN]
        started = time.monotonic()
        if self.topology == "embedded":
            self.procs.start(head + ["--num-cpus", "4"], os.path.join(d, "head.log"))
        else:
            self.procs.start(head + ["--num-cpus", "0"], os.path.join(d, "head.log"))
            self.procs.start([f"{RELEASE}/serve-worker", "--address", f"127.0.0.1:{self.cluster}", "--token", TOKEN,
                              "--num-cpus", "4", "--listen-host", "127.0.0.1", "--node-address", "127.0.0.1"],
                             os.path.join(d, "worker.log"))
        return started

    def logs(self):
        out = []
        for f in ("head.log", "worker.log"):
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
                    return
            except (OSError, KeyError, ValueError, http.client.HTTPException):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name}: echo never reached {echo_replicas} RUNNING replicas")

    def stop(self):
        self.procs.stop()


class RayServe:
    name = "Ray Serve"

    def __init__(self, work):
        self.work, self.procs, self.n = work, Processes(), 0
        self.python = os.path.join(VENV, "bin", "python")

    def launch(self):
        self.n += 1
        self.port = free_port()
        self.log = os.path.join(self.work, f"ray-{self.n}.log")
        started = time.monotonic()
        self.proc = self.procs.start([self.python, "benchmarks/bench_ray.py", str(self.port)], self.log,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
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
    ray_status = "skipped (SKIP_RAY=1)" if SKIP_RAY else ray_available()
    if ray_status is None:
        result["ray_version"] = subprocess.run([os.path.join(VENV, "bin", "python"), "-c", "import ray; print(ray.__version__)"],
                                               capture_output=True, text=True).stdout.strip()

    work = tempfile.mkdtemp(prefix="serve-bench-")
    nginx = Nginx(work)
    systems = [SwiftServe(work, "embedded"), SwiftServe(work, "head+worker")]
    try:
        nginx.start()
        result["nginx"] = {"startup_s": nginx.startup_s, "idle_rss_mib": nginx.idle_rss_mib}
        log(f"nginx on :{nginx.port} (h2c :{nginx.h2_port}): start-up {nginx.startup_s:.3f} s, {nginx.idle_rss_mib:.1f} MiB")
        for s in systems:
            result["systems"][s.name] = measure(s, nginx, work, STARTUP_ROUNDS)
        if ray_status is None:
            ray = RayServe(work)
            try:
                result["systems"]["Ray Serve"] = measure(ray, nginx, work, RAY_STARTUP_ROUNDS, h2=False)
            except (RuntimeError, subprocess.CalledProcessError) as e:
                ray_status = f"failed: {e}"
                log(f"Ray Serve failed: {e}\n{ray.logs()}")
            finally:
                ray.stop()
        result["ray_status"] = ray_status
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
