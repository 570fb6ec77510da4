# swift-serve: the two set-up commands are `make run` and `make test` (see README.md).
# Each installs the Debian packages it needs when they are missing, then builds.

SWIFT ?= swift
# Debian packages: build (libnghttp2-dev, zlib1g-dev, pkg-config), tests and benchmarks
# (nghttp2-client: nghttp and h2load; nghttp2-server: nghttpd; gzip and python3 for zlib interop;
# iproute2, nftables and curl for the partition tests, which run nodes in network namespaces;
# chromium for the dashboard's browser test, which loads the page headless; systemd for
# `systemd-analyze verify` of deploy/systemd's units; curl is also the kubernetes node provider's
# HTTPS client).
APT_PACKAGES := libnghttp2-dev zlib1g-dev pkg-config nghttp2-client nghttp2-server gzip python3 iproute2 nftables curl chromium systemd
KUBERNETES_VALIDATE := 1.37.0
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Installs those of the Debian packages $(1) that are missing.
apt_install = @missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

.PHONY: deps bench-deps build release run test fuzz soak bench bench-wire bench-autoscaling bench-composition bench-batching bench-control-plane protos lint clean

deps:
	$(call apt_install,$(APT_PACKAGES))
	@# The resource tests check that numpy's OpenBLAS pool follows OMP_NUM_THREADS (threadpoolctl).
	@python3 -c 'import numpy, threadpoolctl' 2>/dev/null || python3 -m pip install -q numpy threadpoolctl
	@# deploy/kubernetes's manifests are validated offline against pinned schemas (DeployTests).
	@python3 -c 'import importlib.metadata as m, sys; sys.exit(m.version("kubernetes-validate") != "$(KUBERNETES_VALIDATE)")' 2>/dev/null \
	  || python3 -m pip install -q kubernetes-validate==$(KUBERNETES_VALIDATE)

build: deps
	$(SWIFT) build

# The Swift runtime and Foundation linked in (--static-swift-stdlib): nothing to install beside
# the binaries, a faster start, and each process maps only what it uses of them (about 9 MiB
# less resident per process than with the shared libraries, benchmarks/README.md).
release: deps
	$(SWIFT) build -c release --static-swift-stdlib

# The main job: an embedded head (controller, ingress on :8000, admin API and the dashboard on
# http://127.0.0.1:8265/, replicas on this machine) serving examples/hello.yaml in the foreground;
# Ctrl-C stops everything.
run: build
	.build/debug/serve run examples/hello.yaml

# The tests start the built binaries (serve-wire-echo) and nghttp2's tools as real peers.
# --no-parallel: the memory assertions read this process's peak RSS, which other tests would raise.
test: build
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build --no-parallel

# Fuzzing of the ingress's HTTP/1.1 parser, the config parser (YAML and JSON) and the control
# plane's decoding (protobuf messages, RPC framing): FUZZ_ITERATIONS inputs each (make test runs
# 100,000); FUZZ_SEED picks other inputs (a failure prints the seed that repeats it).
FUZZ_ITERATIONS ?= 1000000
fuzz: build
	$(SWIFT) build --build-tests
	FUZZ_ITERATIONS=$(FUZZ_ITERATIONS) $(if $(FUZZ_SEED),FUZZ_SEED=$(FUZZ_SEED)) \
	  $(SWIFT) test --skip-build --no-parallel --filter Fuzz

# Minutes of load (DURATION, default 180 s) while a worker is SIGKILLed and started again every
# 30 s: echo GETs, h2c uploads without a length (curl), a replica that cuts its answers short, a
# slow-body client, CPU-bound replicas; release binaries. Writes benchmarks/results/soak-latest.md;
# fails if a request went unanswered or an answer was silently wrong (a cut that looked whole).
soak: release
	SKIP_BUILD=1 benchmarks/soak

# The whole benchmark suite (benchmarks/bench.py): swift-serve beside Ray Serve and nginx, then
# benchmarks/wire and benchmarks/autoscaling; writes benchmarks/results/DATE.json, the plots and
# the latest section of benchmarks/README.md. BENCH_QUICK=1 for a run of a few minutes.
bench: deps bench-deps
	python3 benchmarks/bench.py

# wrk and nginx (the HTTP/1.1 load and the one-hop baseline), python3-venv (Ray Serve's
# environment, installed from PyPI by the bench script when missing).
BENCH_APT_PACKAGES := wrk nginx python3-venv
bench-deps:
	$(call apt_install,$(BENCH_APT_PACKAGES))

# Parts of the suite on their own.
bench-wire: deps
	benchmarks/wire

bench-autoscaling: deps
	benchmarks/autoscaling

# What a handle call adds (in process, across nodes) and a stream's time to first byte, on
# release binaries (benchmarks/composition.py); writes benchmarks/results/composition-latest.md.
bench-composition: release
	SKIP_BUILD=1 python3 benchmarks/composition.py

bench-batching: release
	SKIP_BUILD=1 python3 benchmarks/batching.py

# The control plane at scale (issue 16): a release serve-head with 100 to 1,000 simulated workers
# (serve-control-sim, benchmarks/control-plane/sim) joining, at rest, losing 10% of their nodes,
# through a rolling update and an autoscaling step (benchmarks/control_plane.py); writes
# benchmarks/results/control-plane-latest.md and its section of benchmarks/README.md.
# CP_QUICK=1 for a run of a few minutes (100 and 250 nodes); CP_PROFILE=1 adds perf profiles.
bench-control-plane: release
	SKIP_BUILD=1 python3 benchmarks/control_plane.py

protos:
	scripts/gen-protos.sh

# swift-format's findings against .swift-format (NIO's style: 4 spaces, 120 columns); reports,
# does not fail (the older code is not formatted yet).
lint:
	$(SWIFT) format lint -r --configuration .swift-format Sources Tests || true

clean:
	rm -rf .build
