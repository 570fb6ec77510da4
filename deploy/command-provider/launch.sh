#!/bin/sh
# launch TYPE COUNT NODE_ID... — the `launch` command of `provider: {type: command}`.
#
# This example starts each node as a serve-worker process on this machine, so it runs
# anywhere; a cloud version creates one VM (or pod) per NODE_ID whose startup runs the same
# line: serve-worker --node-id NODE_ID $SERVE_WORKER_FLAGS, with SERVE_TOKEN in its
# environment. The head gives: SERVE_ADDRESS, SERVE_TOKEN, SERVE_REQUEST_ID, SERVE_NODE_TYPE,
# SERVE_NODE_COUNT, SERVE_NODE_IDS, SERVE_NODE_RESOURCES (JSON) and SERVE_WORKER_FLAGS
# (shell-quoted, for eval). It may answer {"nodes": [{"node_id": ...}]} with what it started.
#
# Settings: SERVE_PROVIDER_DIR (where nodes are recorded, default /tmp/serve-command-provider)
# and SERVE_WORKER_BIN (default: serve-worker on PATH).
set -eu
dir=${SERVE_PROVIDER_DIR:-/tmp/serve-command-provider}
worker=${SERVE_WORKER_BIN:-serve-worker}
mkdir -p "$dir"
type=$1
shift 2

start() {
    id=$1
    # The same node id twice (a retried request) starts it once.
    [ -f "$dir/$id.pid" ] && return 0
    eval "set -- $SERVE_WORKER_FLAGS"
    "$worker" --node-id "$id" "$@" --listen-host 127.0.0.1 </dev/null >"$dir/$id.log" 2>&1 &
    echo $! >"$dir/$id.pid"
    echo "$type" >"$dir/$id.type"
}

printf '{"nodes": ['
sep=
for id in "$@"; do
    start "$id"
    printf '%s{"node_id": "%s", "node_type": "%s", "state": "running"}' "$sep" "$id" "$type"
    sep=', '
done
printf ']}\n'
