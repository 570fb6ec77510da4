#!/bin/sh
# list — the `list` command of `provider: {type: command}`: every node launch.sh started that is
# still running, as {"nodes": [{"node_id", "node_type", "state"}]}. A node missing from the list
# is gone (the head replaces it if it had not joined yet). A cloud version lists the VMs
# carrying the cluster's tag.
set -eu
dir=${SERVE_PROVIDER_DIR:-/tmp/serve-command-provider}

alive() {
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)
    [ -n "$state" ] && [ "$state" != Z ]
}

printf '{"nodes": ['
sep=
for file in "$dir"/*.pid; do
    [ -e "$file" ] || continue
    id=$(basename "$file" .pid)
    if alive "$(cat "$file")"; then
        printf '%s{"node_id": "%s", "node_type": "%s", "state": "running"}' "$sep" "$id" "$(cat "$dir/$id.type")"
        sep=', '
    fi
done
printf ']}\n'
