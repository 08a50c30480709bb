#!/usr/bin/env bash
# `make push REGISTRY=host[:port]/path`: pushes every image archive `make images` wrote to
# REGISTRY/<name>:<version> with crane (built by `make tools`; it reads the Docker
# manifest.json the archives carry). Credentials: crane's (`crane auth login`, or a Docker
# config.json). A registry on localhost/127.0.0.1 is spoken to over plain HTTP, as crane
# does for loopback; any other over HTTPS.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/versions.sh
registry="${1:-}"
if [ -z "$registry" ]; then
  echo "push: REGISTRY is not set; e.g. make push REGISTRY=registry.example.com/streamgate" >&2
  exit 2
fi
registry="${registry%/}"
TOOLS="${STREAMGATE_TOOLS:-$HOME/.cache/streamgate}"
crane="$TOOLS/crane-$CRANE_VERSION/bin/crane"
[ -x "$crane" ] || bash scripts/tools.sh crane
version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)"
for name in operator sidecar demo-app pause; do
  archive="target/images/$name-$version.tar"
  [ -f "$archive" ] || { echo "push: $archive not found; run make images" >&2; exit 1; }
  ref="$registry/$name:$version"
  digest="$("$crane" push "$archive" "$ref" 2>/tmp/streamgate-push.$$.log)" ||
    { echo "push: pushing $archive to $ref failed: $(tail -n 3 /tmp/streamgate-push.$$.log)" >&2; rm -f /tmp/streamgate-push.$$.log; exit 1; }
  rm -f /tmp/streamgate-push.$$.log
  echo "$ref  $digest"
done
