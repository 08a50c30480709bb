#!/usr/bin/env bash
# `make images`: the OCI image archives of streamgate/operator, streamgate/sidecar,
# streamgate/demo-app (and streamgate/pause, the local node's pod sandbox), built from
# release binaries without a Docker engine and without pulling any base image. See
# scripts/oci_image.py for what an image holds and why it is reproducible.
#
#   target/images/<name>-<version>.tar   (path and sizes printed)
#
# STREAMGATE_IMAGE_SOURCE overrides the org.opencontainers.image.source label.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/versions.sh

TOOLS="${STREAMGATE_TOOLS:-$HOME/.cache/streamgate}"
BASE="$TOOLS/image-base-libc6-$LIBC6_DEB_VERSION-libgcc-$LIBGCC_DEB_VERSION-ca-$CA_CERTIFICATES_DEB_VERSION"
[ -f "$BASE/.done" ] || bash scripts/tools.sh image-base
OUT=target/images
mkdir -p "$OUT" target/pause

version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)"
[ -n "$version" ] || { echo "images: no [workspace.package] version in Cargo.toml" >&2; exit 1; }
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
# Every file's timestamp: the commit's time, so rebuilding one commit gives the same digests.
epoch="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
source_url="${STREAMGATE_IMAGE_SOURCE:-https://github.com/streamgate/streamgate}"

echo "==> [images] cargo build --release (operator, sidecar, demo-app)"
cargo build --release --quiet -p streamgate-operator -p streamgate-sidecar -p streamgate-demo-app

echo "==> [images] pause (static C)"
gcc -static -Os -s -o target/pause/pause.tmp images/pause/pause.c
mv target/pause/pause.tmp target/pause/pause

build() {
  local name="$1" binary="$2" description="$3"
  local archive="$OUT/$name-$version.tar"
  python3 scripts/oci_image.py --binary "$binary" --repository "streamgate/$name" \
    --version "$version" --description "$description" --revision "$revision" \
    --source "$source_url" --licenses Apache-2.0 --epoch "$epoch" \
    --base-root "$BASE/root" --ca-bundle "$BASE/ca-certificates.crt" --output "$archive" >"$OUT/$name.json"
  python3 - "$OUT/$name.json" <<'PY'
import json, os, sys
info = json.load(open(sys.argv[1]))
mib = lambda n: f"{n / 1048576:.1f} MiB"
print(f"{info['reference']:<28} {info['archive']:<40} archive {mib(os.path.getsize(info['archive']))}, "
      f"uncompressed {mib(info['uncompressed'])}, {info['manifest'][:19]}")
PY
}

strip_copy() {
  # Release binaries keep their symbol table for backtraces' sake; the image needs none.
  local src="$1" dst="target/images/bin/$(basename "$1")"
  mkdir -p target/images/bin
  objcopy --strip-all "$src" "$dst"
  echo "$dst"
}

build operator "$(strip_copy target/release/streamgate-operator)" "StreamGate operator: reconciles StreamGateServices, serves the sidecar injection webhook"
build sidecar "$(strip_copy target/release/streamgate-sidecar)" "StreamGate sidecar: health, Consul registration, NATS JetStream events, gRPC forwarding"
build demo-app "$(strip_copy target/release/streamgate-demo-app)" "StreamGate demo app: the test and demo service"
build pause target/pause/pause "Pod sandbox process for the local node"
