#!/usr/bin/env bash
# Regenerates Sources/ServeProto/*.pb.swift from Protos/serve/v1/*.proto.
#
# Usage: scripts/gen-protos.sh
#   REBUILD_PLUGIN=1 scripts/gen-protos.sh   # force a rebuild of protoc-gen-swift
#
# protoc-gen-swift is built from the swift-protobuf package dependency (so the
# generated code always matches the SwiftProtobuf runtime we link) into the
# git-ignored scratch path .build-protoc. Running the script twice in a row
# leaves no git diff.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

proto_root="Protos"
out_dir="Sources/ServeProto"
scratch=".build-protoc"

if ! command -v protoc >/dev/null 2>&1; then
    echo "error: protoc not found in PATH." >&2
    echo "  Debian/Ubuntu: apt-get install -y protobuf-compiler" >&2
    echo "  macOS:         brew install protobuf" >&2
    exit 1
fi

plugin="$scratch/release/protoc-gen-swift"
# Rebuild when missing, when asked to, or when dependency versions may have
# changed since the plugin was built.
if [[ ! -x "$plugin" || "${REBUILD_PLUGIN:-0}" == "1" || \
      ( -f Package.resolved && Package.resolved -nt "$plugin" ) ]]; then
    echo "Building protoc-gen-swift (swift build -c release, scratch path $scratch)..." >&2
    swift build -c release --product protoc-gen-swift --scratch-path "$scratch" >&2
    plugin="$(swift build -c release --scratch-path "$scratch" --show-bin-path)/protoc-gen-swift"
    touch "$plugin"
fi
if [[ ! -x "$plugin" ]]; then
    echo "error: $plugin was not built" >&2
    exit 1
fi

shopt -s nullglob
protos=("$proto_root"/serve/v1/*.proto)
shopt -u nullglob
if (( ${#protos[@]} == 0 )); then
    echo "error: no .proto files under $proto_root/serve/v1" >&2
    exit 1
fi

# Generate into a temporary directory first so a protoc failure leaves the
# committed files untouched.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

protoc \
    --plugin=protoc-gen-swift="$plugin" \
    --swift_out="$tmp" \
    --swift_opt=Visibility=Public \
    --swift_opt=FileNaming=DropPath \
    -I "$proto_root" \
    "${protos[@]}"

# Replace the old generated files (drops files of deleted .proto files).
rm -f "$out_dir"/*.pb.swift
cp "$tmp"/*.pb.swift "$out_dir"/

echo "Generated:" >&2
ls -1 "$out_dir"/*.pb.swift >&2
