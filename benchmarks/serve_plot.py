"""The benchmarks' plots, drawn by `serve-plot` (Sources/serve-plot: the renderer `serve simulate
--plot` uses): a script describes a chart as JSON (benchmarks/README.md, "Plots") and this writes
it as SVG. Standard library only: autoscaling_common.py imports it in Ray's virtual environment too.
"""
import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def binary():
    """serve-plot from the build the benchmark runs: $SERVE_PLOT; else beside $SERVE_BIN's binaries
    or $SERVE; else .build/release, then .build/debug."""
    candidates = [os.environ.get("SERVE_PLOT")]
    if os.environ.get("SERVE_BIN"):
        candidates.append(os.path.join(os.environ["SERVE_BIN"], "serve-plot"))
    if os.environ.get("SERVE"):
        candidates.append(os.path.join(os.path.dirname(os.environ["SERVE"]), "serve-plot"))
    candidates += [".build/release/serve-plot", ".build/debug/serve-plot"]
    for path in filter(None, candidates):
        path = os.path.join(ROOT, path)
        if os.access(path, os.X_OK):
            return path
    raise RuntimeError("serve-plot is not built: swift build -c release --product serve-plot (or set SERVE_PLOT)")


def draw(chart, path):
    """Writes `chart` (a dict in serve-plot's JSON form) to `path` as SVG."""
    subprocess.run([binary(), "-", "--output", path], input=json.dumps(chart), text=True, check=True)
