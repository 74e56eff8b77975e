#!/usr/bin/env bash
# Install Debian's chromium when missing (for the leaderboard page's browser test) and check that it renders a page
# headless. Re-running when it works does nothing but the check. On failure it prints one line saying why, records
# it in .cache/browser.status (read by the tests, which then skip, or fail under CI=true) and exits 1.
set -uo pipefail
cd "$(dirname "$0")/.."

STATUS_FILE=.cache/browser.status
mkdir -p .cache

fail() {
    echo "browser: $*" | tee "$STATUS_FILE" >&2
    exit 1
}

if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ]; then sudo=()
    elif sudo -n true 2>/dev/null; then sudo=(sudo -n)
    else fail "need root (or passwordless sudo) to apt-get install chromium"; fi
    echo "browser: installing chromium (apt)" >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null \
        && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
            >/dev/null \
        || fail "apt-get install chromium failed"
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
dom=$(timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --no-first-run --user-data-dir="$profile" --dump-dom 'data:text/html,<p>ok</p>' \
    2>/dev/null)
[[ $dom == *"<p>ok</p>"* ]] || fail "chromium --headless --dump-dom did not render a page"
echo "ok $(date -u +%FT%TZ)" >"$STATUS_FILE"
echo "browser: chromium renders headless" >&2
