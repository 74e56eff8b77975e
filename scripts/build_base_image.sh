#!/usr/bin/env bash
# Build the local CPU base image vrbench/base:bookworm without any container registry: debootstrap a minimal
# Debian bookworm with python3 and numpy from the machine's own Debian mirror, then `docker import` it.
# Skipped when an image built by this very script (label vrbench.base.script = its sha256) already exists.
# Method Dockerfiles use it in CI through `--build-arg BASE=vrbench/base:bookworm`.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${BASE_IMAGE:-vrbench/base:bookworm}
SUITE=bookworm
PACKAGES=python3,python3-numpy
KEY=$(sha256sum "$0" | cut -c1-64)

if [ "$(docker image inspect --format '{{index .Config.Labels "vrbench.base.script"}}' "$IMAGE" 2>/dev/null)" = "$KEY" ]; then
    echo "base image: $IMAGE is up to date" >&2
    exit 0
fi

# the first mirror of the machine's apt sources (deb822 .sources or one-line .list)
MIRROR=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list \
             /etc/apt/sources.list.d/*.list 2>/dev/null | grep -oE 'https?://[^ ]+' | head -n1 || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}

ROOTFS=$(mktemp -d /var/tmp/vrbench-rootfs.XXXXXX)
trap 'rm -rf --one-file-system "$ROOTFS"' EXIT
echo "base image: debootstrap $SUITE ($PACKAGES) from $MIRROR, about a minute" >&2
if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1; then
    echo "base image: debootstrap failed; last lines of $ROOTFS.log:" >&2
    tail -n 5 "$ROOTFS.log" >&2
    exit 1
fi
rm -f "$ROOTFS.log"
rm -rf "${ROOTFS:?}"/var/cache/apt/archives/*.deb "${ROOTFS:?}"/var/lib/apt/lists/*

tar -C "$ROOTFS" -c . | docker import \
    --change "LABEL vrbench.base.script=$KEY" \
    --change "LABEL org.opencontainers.image.description=\"Debian $SUITE minbase with $PACKAGES (debootstrap)\"" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$IMAGE" >/dev/null
echo "base image: built $IMAGE ($(docker image inspect --format '{{.Id}}' "$IMAGE"))" >&2
