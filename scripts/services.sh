#!/usr/bin/env bash
# Start the services the docker backend and its tests need, idempotently:
#   dockerd (Debian's docker.io) on /var/run/docker.sock, and a local OCI registry (Debian's docker-registry)
#   on 127.0.0.1:5000 with filesystem storage. Installs the packages (and debootstrap, for the base image)
#   only when missing. Re-running when everything answers does nothing.
# On failure it prints one line saying why, records it in .cache/services.status (read by the tests, which
# then skip, or fail under CI=true) and exits 1.
set -uo pipefail
cd "$(dirname "$0")/.."

STATE=${VRBENCH_STATE:-/var/lib/vrbench}
REGISTRY_ADDR=127.0.0.1:5000
STATUS_FILE=.cache/services.status
WAIT_S=${SERVICES_WAIT_S:-60}
mkdir -p .cache

fail() {
    echo "services: $*" | tee "$STATUS_FILE" >&2
    exit 1
}

as_root() {  # run a command as root: directly, or through passwordless sudo
    if [ "$(id -u)" = 0 ]; then "$@"
    elif sudo -n true 2>/dev/null; then sudo -n "$@"
    else fail "need root (or passwordless sudo) to $*"; fi
}

wait_for() {  # wait_for WHAT LOG COMMAND...: poll COMMAND until it succeeds, at most WAIT_S seconds
    local what=$1 log=$2; shift 2
    for _ in $(seq $((WAIT_S * 2))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    fail "$what did not answer within ${WAIT_S}s; last lines of $log: $(as_root tail -n 3 "$log" 2>/dev/null | tr '\n' ' ')"
}

docker_ok() { as_root docker version --format '{{.Server.Version}}'; }
registry_ok() { python3 - "$REGISTRY_ADDR" <<'EOF'
import sys, urllib.request
urllib.request.urlopen(f"http://{sys.argv[1]}/v2/", timeout=2).read()
EOF
}

# --- packages ---------------------------------------------------------------------------------------------
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    echo "services: installing ${missing[*]} (apt)" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null \
        && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
            >/dev/null \
        || fail "apt-get install ${missing[*]} failed"
fi
command -v docker >/dev/null || fail "no docker client on PATH after installing docker.io"

# --- dockerd ----------------------------------------------------------------------------------------------
if ! docker_ok >/dev/null 2>&1; then
    as_root mkdir -p "$STATE"
    echo "services: starting dockerd (log: $STATE/dockerd.log)" >&2
    as_root sh -c 'setsid nohup dockerd --host unix:///var/run/docker.sock >"$1" 2>&1 </dev/null &' _ "$STATE/dockerd.log"
    wait_for dockerd "$STATE/dockerd.log" docker_ok
fi

# --- registry ---------------------------------------------------------------------------------------------
if ! registry_ok >/dev/null 2>&1; then
    as_root mkdir -p "$STATE/registry"
    as_root tee "$STATE/registry.yml" >/dev/null <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $STATE/registry
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
EOF
    echo "services: starting the registry on $REGISTRY_ADDR (log: $STATE/registry.log)" >&2
    as_root sh -c 'setsid nohup docker-registry serve "$1" >"$2" 2>&1 </dev/null &' _ "$STATE/registry.yml" "$STATE/registry.log"
    wait_for "registry on $REGISTRY_ADDR" "$STATE/registry.log" registry_ok
fi

echo "ok $(date -u +%FT%TZ)" >"$STATUS_FILE"
echo "services: dockerd $(docker_ok) and the registry on $REGISTRY_ADDR are up" >&2
