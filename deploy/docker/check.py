#!/usr/bin/env python3
"""What can be checked of deploy/docker/Dockerfile without a container engine (make test runs it
through Tests/IntegrationTests/DeployTests.swift; run it by hand from the repository root).

1. Its structure: the stages build, runtime, worker and head; the build stage runs
   deploy/docker/build.sh (the script a person runs on Debian 12) for a release build with
   --static-swift-stdlib; the runtime stage copies the three binaries from it and switches to a
   non-root numeric user; the worker and head stages start serve-worker and serve-head.
2. The build stage's Debian packages are installed on this machine (the build that make test
   runs used them).
3. Every shared library the binaries load (ldd) belongs to a Debian package that the runtime
   stage installs. Release binaries (.build/release, what the image holds) are checked when all
   three exist: they must load no Swift library. Otherwise the debug binaries are checked, and
   their Swift runtime libraries, which the release build links in, are listed apart.

Prints what it checked; exits 1 with every problem found.
"""
import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCKERFILE = os.path.join(ROOT, "deploy/docker/Dockerfile")
BINARIES = ["serve-head", "serve-worker", "serve"]
problems = []


def stages(text):
    """{stage name: [instruction lines]}, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    result, current = {}, None
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?$", line, re.IGNORECASE)
        if match:
            current = match.group(1) or "stage%d" % len(result)
            result[current] = []
        elif current is not None:
            result[current].append(line)
    return result


def instructions(stage, keyword):
    return [line[len(keyword):].strip() for line in stage if line.upper().startswith(keyword + " ")]


def apt_packages(stage):
    """The packages named by `apt-get install` in a stage's RUN lines."""
    packages = set()
    for run in instructions(stage, "RUN"):
        for command in re.split(r"&&|;", run):
            words = shlex.split(command)
            if "apt-get" in words and "install" in words:
                packages.update(w for w in words[words.index("install") + 1:] if not w.startswith("-"))
    return packages


def package_of(path):
    """The Debian package that ships a library path (merged /usr or not)."""
    candidates = [path, os.path.realpath(path)]
    for p in list(candidates):
        candidates.append(p[4:] if p.startswith("/usr/") else "/usr" + p)
    for candidate in candidates:
        out = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
        if out.returncode == 0:
            return out.stdout.split(":")[0].strip()
    return None


def main():
    text = open(DOCKERFILE).read()
    found = stages(text)
    for name in ["build", "runtime", "worker", "head"]:
        if name not in found:
            problems.append("no stage named %s" % name)
    if problems:
        return
    build, runtime = found["build"], found["runtime"]
    runs = [re.sub(r"^(--\S+\s+)*", "", run) for run in instructions(build, "RUN")]  # without --mount=...
    if not any(run.startswith("deploy/docker/build.sh release") for run in runs):
        problems.append("the build stage does not run deploy/docker/build.sh release")
    script = open(os.path.join(ROOT, "deploy/docker/build.sh")).read()
    if "swift build -c release --static-swift-stdlib" not in script:
        problems.append("build.sh does not build with -c release --static-swift-stdlib")
    copies = " ".join(instructions(runtime, "COPY"))
    for binary in BINARIES:
        if "/out/%s" % binary not in copies or "--from=build" not in copies:
            problems.append("the runtime stage does not copy %s from the build stage" % binary)
    users = instructions(runtime, "USER")
    if not users or users[-1].split(":")[0] in ("0", "root") or not users[-1].split(":")[0].isdigit():
        problems.append("the runtime stage must end as a non-root numeric USER, not %r" % users)
    for stage, binary in [("worker", "serve-worker"), ("head", "serve-head")]:
        entry = instructions(found[stage], "ENTRYPOINT")
        if not entry or "/usr/local/bin/%s" % binary not in entry[-1]:
            problems.append("the %s stage's ENTRYPOINT does not start %s" % (stage, binary))
    if list(found)[-1] != "head":
        problems.append("the last stage (the default target) must be head")
    print("Dockerfile structure: stages %s" % ", ".join(found))

    build_packages = re.search(r'^packages="([^"]*)"', script, re.MULTILINE).group(1).split()
    for package in build_packages:
        status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True).stdout
        if "install ok installed" not in status:
            problems.append("the build stage's package %s is not installed here (build.sh deps)" % package)
    print("build stage packages installed here: %s" % " ".join(build_packages))

    runtime_packages = apt_packages(runtime)
    release = [os.path.join(ROOT, ".build/release", b) for b in BINARIES]
    debug = [os.path.join(ROOT, ".build/debug", b) for b in BINARIES]
    if all(os.access(p, os.X_OK) for p in release):
        binaries, kind = release, "release"
    elif all(os.access(p, os.X_OK) for p in debug):
        binaries, kind = debug, "debug"
    else:
        problems.append("no built binaries to check (swift build first)")
        return
    swift_runtime = set()
    needed = {}
    for binary in binaries:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            line = line.strip()
            if "not found" in line:
                problems.append("%s: %s" % (os.path.basename(binary), line))
                continue
            match = re.match(r"(\S+) => (/\S+)", line) or re.match(r"(/\S+) \(", line)
            if not match:
                continue  # linux-vdso
            path = match.group(match.lastindex)
            if "/lib/swift/" in path:
                if kind == "release":
                    problems.append("%s loads the Swift library %s: not linked with --static-swift-stdlib" % (binary, path))
                swift_runtime.add(os.path.basename(path))
                continue
            package = package_of(path)
            if package is None:
                problems.append("%s loads %s, which no Debian package ships" % (os.path.basename(binary), path))
                continue
            needed.setdefault(package, set()).add(os.path.basename(path))
    for package, libraries in sorted(needed.items()):
        if package not in runtime_packages:
            problems.append("the binaries load %s from %s, which the runtime stage does not install" % (", ".join(sorted(libraries)), package))
    print("%s binaries load (ldd): %s" % (kind, "; ".join("%s (%s)" % (p, ", ".join(sorted(l))) for p, l in sorted(needed.items()))))
    print("runtime stage installs: %s" % " ".join(sorted(runtime_packages)))
    if swift_runtime:
        print("Swift runtime libraries of the debug build (linked in by --static-swift-stdlib in the image): %d" % len(swift_runtime))


main()
for problem in problems:
    print("PROBLEM: " + problem, file=sys.stderr)
sys.exit(1 if problems else 0)
