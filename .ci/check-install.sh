#!/usr/bin/env bash
# CI: the production install path, end to end, without touching the machine's systemd:
# deploy/install.sh into a throw-away root, systemd-analyze verify on the units it wrote,
# then the unit's own ExecStartPre/ExecStart command lines run as the unit's user against the
# configuration install.sh had 'init' write, until the gateway says it is ready.
set -euo pipefail
cd "$(dirname "$0")/.."

# The checks' own tools (systemd-analyze, runuser, pgrep).
# shellcheck source=deploy/lib.sh
. deploy/lib.sh
apt_install systemd util-linux procps

root="$(mktemp -d /tmp/og-install.XXXXXX)"
chmod 0755 "$root"  # the service user must reach the venv and the config under it
gateway_pid=""
cleanup() {
    pkill -TERM -f "$root/opt/onvif-gateway/bin/onvif-gateway" 2>/dev/null || true
    if [ -n "$gateway_pid" ]; then wait "$gateway_pid" 2>/dev/null || true; fi
    rm -rf "$root"
}
trap cleanup EXIT

echo "==> [install] sudo bash deploy/install.sh --root $root"
bash deploy/install.sh --root "$root"
unit="$root/etc/systemd/system/onvif-gateway.service"

echo "==> [install] systemd-analyze verify"
out="$(systemd-analyze verify "$unit" "$root"/etc/systemd/system/onvif-gateway-egress-counters.* 2>&1)"
if [ -n "$out" ]; then echo "$out"; echo "FAIL: systemd-analyze verify complained" >&2; exit 1; fi
echo "ok: the installed units verify"

echo "==> [install] a second run keeps the configuration"
before="$(sha256sum "$root/etc/onvif-gateway/gateway.toml")"
bash deploy/install.sh --root "$root" >/dev/null
[ "$before" = "$(sha256sum "$root/etc/onvif-gateway/gateway.toml")" ] \
    || { echo "FAIL: install.sh rewrote an existing configuration" >&2; exit 1; }
echo "ok: gateway.toml untouched"

# The unit's command lines, as systemd would run them: a '+' prefix runs with full
# privileges, anything else as the unit's User=.
user="$(sed -n 's/^User=//p' "$unit")"
[ "$(stat -c '%U:%G %a' "$root/etc/onvif-gateway/gateway.toml")" = "root:$user 640" ] \
    || { echo "FAIL: gateway.toml is not root:$user 0640" >&2; exit 1; }
[ "$(stat -c '%U %a' "$root/var/lib/onvif-gateway")" = "$user 700" ] \
    || { echo "FAIL: the state directory is not $user 0700" >&2; exit 1; }
echo "ok: config root:$user 0640, state $user 0700"

run_as_unit() {  # run_as_unit COMMAND-LINE (as written after ExecX=)
    local line="$1"
    # shellcheck disable=SC2086  # split as systemd splits a command line without quotes
    case "$line" in
        +*) (cd / && ${line#+}) ;;
        *) (cd / && runuser -u "$user" -- $line) ;;
    esac
}

echo "==> [install] ExecStartPre"
while IFS= read -r line; do
    echo "    $line"
    run_as_unit "$line"
done < <(sed -n 's/^ExecStartPre=//p' "$unit")

echo "==> [install] ExecStart as $user, until ready"
log="$root/gateway.log"
: > "$log"
run_as_unit "$(sed -n 's/^ExecStart=//p' "$unit")" > "$log" 2>&1 &
gateway_pid=$!
for _ in $(seq 600); do
    grep -q '"event": "ready"' "$log" && break
    kill -0 "$gateway_pid" 2>/dev/null || break
    sleep 0.1
done
sed 's/^/    /' "$log"
grep -q '"event": "ready"' "$log" \
    || { echo "FAIL: the installed gateway did not reach ready as $user" >&2; exit 1; }
pgrep -u "$user" -f "$root/opt/onvif-gateway/bin/onvif-gateway --log-json run" >/dev/null \
    || { echo "FAIL: the gateway does not run as $user" >&2; exit 1; }
echo "ok: the installed unit's ExecStart reached ready as $user"
