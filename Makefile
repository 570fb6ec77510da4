# swift-serve: the two set-up commands are `make run` and `make test` (see README.md).
# Each installs the Debian packages it needs when they are missing, then builds.

SWIFT ?= swift
# Debian packages: build (libnghttp2-dev, zlib1g-dev, pkg-config), tests and benchmarks
# (nghttp2-client: nghttp and h2load; nghttp2-server: nghttpd; gzip and python3 for zlib interop;
# iproute2, nftables and curl for the partition tests, which run nodes in network namespaces).
APT_PACKAGES := libnghttp2-dev zlib1g-dev pkg-config nghttp2-client nghttp2-server gzip python3 iproute2 nftables curl
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps build release run test fuzz soak bench-wire bench-ingress bench-autoscaling protos clean

deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
	@# The resource tests check that numpy's OpenBLAS pool follows OMP_NUM_THREADS (threadpoolctl).
	@python3 -c 'import numpy, threadpoolctl' 2>/dev/null || python3 -m pip install -q numpy threadpoolctl

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release

# The main job: an embedded head (controller, ingress on :8000, admin API on :8265, replicas on
# this machine) serving examples/hello.yaml in the foreground; Ctrl-C stops everything.
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
# 30 s; release binaries. Writes benchmarks/results/soak-latest.md; fails if a request went
# unanswered.
soak: release
	SKIP_BUILD=1 benchmarks/soak

bench-wire: deps
	benchmarks/wire

# wrk against the HTTP ingress (echo, 1 and 2 replicas) beside nginx; installs wrk and nginx if missing.
bench-ingress: deps
	benchmarks/ingress

bench-autoscaling:
	benchmarks/autoscaling

protos:
	scripts/gen-protos.sh

clean:
	rm -rf .build
