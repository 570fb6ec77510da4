#!/bin/sh
# terminate NODE_ID... — the `terminate` command of `provider: {type: command}`: stops the
# nodes launch.sh started (SIGTERM: a worker drains, then exits; SIGKILL after 10 s). Ids it
# does not know are already gone. A cloud version deletes the VMs.
set -eu
dir=${SERVE_PROVIDER_DIR:-/tmp/serve-command-provider}

alive() {
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)
    [ -n "$state" ] && [ "$state" != Z ]
}

for id in "$@"; do
    [ -f "$dir/$id.pid" ] || continue
    pid=$(cat "$dir/$id.pid")
    kill "$pid" 2>/dev/null || true
    tries=0
    while alive "$pid" && [ "$tries" -lt 100 ]; do
        sleep 0.1
        tries=$((tries + 1))
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/$id.pid" "$dir/$id.type"
done
