#!/usr/bin/env bash
# promtool (Prometheus rule tests) and amtool (Alertmanager config checks) for `make tools` and the
# tests in tests/unit/ops/test_alert_rules.py. Nothing is installed system-wide: if a tool is not on
# PATH, its Debian package is fetched with `apt-get download` (no root needed) into a cache directory
# and unpacked with `dpkg-deb -x` into .venv-tools/; the binaries end up in .venv-tools/bin.
# Usage: scripts/ensure-promtool.sh            both tools (amtool only if its package is found)
# Exit status 0 when promtool is available afterwards (amtool is optional), else 1 with the reason.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="${SIP_TOOLS_DIR:-$ROOT/.venv-tools}"
CACHE="${SIP_TOOLS_CACHE:-$TOOLS/cache}"
mkdir -p "$TOOLS/bin" "$CACHE"

have() { command -v "$1" >/dev/null 2>&1 || [ -x "$TOOLS/bin/$1" ]; }

fetch() {  # fetch <debian package> <binary>
    local package="$1" binary="$2"
    if have "$binary"; then
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1 || {
        echo "ensure-promtool: $binary is not on PATH and apt-get/dpkg-deb are not available" >&2
        return 1
    }
    local deb
    deb="$(ls "$CACHE"/"${package}"_*.deb 2>/dev/null | head -n1 || true)"
    if [ -z "$deb" ]; then
        (cd "$CACHE" && apt-get download "$package" >/dev/null 2>"$CACHE/$package.log") || {
            echo "ensure-promtool: apt-get download $package failed (see $CACHE/$package.log)" >&2
            return 1
        }
        deb="$(ls "$CACHE"/"${package}"_*.deb | head -n1)"
    fi
    local unpacked="$TOOLS/pkg/$package"
    rm -rf "$unpacked" && mkdir -p "$unpacked"
    dpkg-deb -x "$deb" "$unpacked"
    ln -sf "$unpacked/usr/bin/$binary" "$TOOLS/bin/$binary"
    echo "ensure-promtool: $binary from $(basename "$deb") in $TOOLS/bin" >&2
}

# Debian's alertmanager reads its default notification template from /usr/share/prometheus/alertmanager
# (upstream embeds it); for the tests' private Alertmanager a copy of the binary reads it from a
# path of the same length, a link to the unpacked package's directory — nothing is written to /usr.
alertmanager_for_tests() {
    local unpacked="$TOOLS/pkg/prometheus-alertmanager" share="/tmp/.sip-suite-alertmanager-share"
    [ -x "$unpacked/usr/bin/prometheus-alertmanager" ] || return 0
    # (again each time: another checkout may have pointed the link at its own copy, since removed)
    [ -e "$share" ] || ln -sfn "$unpacked/usr/share/prometheus/alertmanager" "$share"
    [ -x "$TOOLS/bin/prometheus-alertmanager" ] && return 0
    python3 - "$unpacked/usr/bin/prometheus-alertmanager" "$TOOLS/bin/prometheus-alertmanager" "$share" <<'PY'
import os, sys
src, dst, share = sys.argv[1:]
data = open(src, "rb").read()
old = b"/usr/share/prometheus/alertmanager"
assert len(share.encode()) == len(old)
open(dst, "wb").write(data.replace(old, share.encode()))
os.chmod(dst, 0o755)
PY
}

fetch prometheus promtool
if fetch prometheus-alertmanager amtool; then
    alertmanager_for_tests
else
    echo "ensure-promtool: amtool unavailable (optional)" >&2
fi
