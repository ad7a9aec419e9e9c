#!/bin/sh
# Builds localhost/lwm2m-harness:latest FROM scratch with podman (or buildah, or docker):
# the release binary and the shared libraries `ldd` says it links, at their paths.
#   deploy/k8s/build-image.sh [BINARY]   (default: target/release/lwm2m-harness)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-target/release/lwm2m-harness}
tag=${TAG:-localhost/lwm2m-harness:latest}
[ -x "$bin" ] || { echo "no binary $bin: cargo build --release -p lwm2m-harness" >&2; exit 1; }
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/tmp"
chmod 1777 "$ctx/rootfs/tmp"
cp "$bin" "$ctx/rootfs/usr/local/bin/lwm2m-harness"
# Every library path ldd prints (`name => /path (addr)` and the loader's `/path (addr)`).
ldd "$bin" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | sort -u |
while read -r lib; do
    mkdir -p "$ctx/rootfs$(dirname "$lib")"
    cp -L "$lib" "$ctx/rootfs$lib"
done
cp "$here/Containerfile" "$ctx/Containerfile"
if command -v podman >/dev/null; then
    podman build -t "$tag" -f "$ctx/Containerfile" "$ctx"
elif command -v buildah >/dev/null; then
    buildah bud -t "$tag" -f "$ctx/Containerfile" "$ctx"
else
    docker build -t "$tag" -f "$ctx/Containerfile" "$ctx"
fi
echo "built $tag"
