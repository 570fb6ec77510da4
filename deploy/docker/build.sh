#!/bin/sh
# The build stage of deploy/docker/Dockerfile, as a script so the same commands run on a Debian 12
# machine without a container engine:
#
#   deploy/docker/build.sh deps          # the Debian packages the build needs (sudo when not root)
#   deploy/docker/build.sh release OUT   # swift build -c release --static-swift-stdlib; the
#                                        # binaries serve-head, serve-worker and serve into OUT
#
# Run from the repository root.
set -eu
packages="libnghttp2-dev zlib1g-dev pkg-config"
case "${1:-}" in
deps)
    missing=""
    for p in $packages; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        sudo=""
        [ "$(id -u)" = 0 ] || sudo=sudo
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing
    fi
    ;;
release)
    out=${2:?usage: build.sh release OUT}
    swift build -c release --static-swift-stdlib
    bin=$(swift build -c release --static-swift-stdlib --show-bin-path)
    mkdir -p "$out"
    cp "$bin/serve-head" "$bin/serve-worker" "$bin/serve" "$out/"
    ;;
*)
    echo "usage: build.sh deps | build.sh release OUT" >&2
    exit 64
    ;;
esac
