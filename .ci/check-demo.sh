#!/usr/bin/env bash
# CI: the README's first command, exactly as the README prints it, on a fresh copy of this
# checkout: it must end in a running demo whose printed RTSP URL plays (ffprobe, with the
# printed VMS password), whose dashboard serves its sign-in page (curl), and which stops on
# SIGINT with exit 0 within 10 s.
set -euo pipefail
cd "$(dirname "$0")/.."

# The first command of the README's quick start: the first line of its first ```sh block.
command="$(awk '/^```sh$/ {inside=1; next} inside {print; exit}' README.md)"
case "$command" in
    *"onvif-gateway demo"*) ;;
    *) echo "FAIL: the README's first command is not the demo: $command" >&2; exit 1 ;;
esac

copy="$(mktemp -d /tmp/og-readme.XXXXXX)"
demo_pid=""
cleanup() {
    if [ -n "$demo_pid" ] && kill -0 "$demo_pid" 2>/dev/null; then
        kill -KILL -- "-$demo_pid" 2>/dev/null || true
    fi
    rm -rf "$copy"
}
trap cleanup EXIT
git clone -q . "$copy/checkout"
cd "$copy/checkout"
echo "==> [readme] $command"
log="$copy/demo.log"
: > "$log"
setsid bash -c "$command" > "$log" 2>&1 < /dev/null &
demo_pid=$!

# Installing and encoding the demo's clips the first time take a few minutes.
for _ in $(seq 1200); do
    grep -q "^ONVIF devices:" "$log" && break
    kill -0 "$demo_pid" 2>/dev/null || break
    sleep 0.5
done
if ! grep -q "^ONVIF devices:" "$log"; then
    tail -40 "$log"
    echo "FAIL: the README's first command did not reach a running demo" >&2
    exit 1
fi
sleep 1  # the ONVIF lines follow in the same write; let them land
sed -n '/onvif-gateway demo is running/,$p' "$log"

password="$(sed -n "s/^VMS credentials:  user 'vms'  password '\(.*\)'$/\1/p" "$log")"
url="$(grep -m1 -o 'rtsp://[^ ]*/main$' "$log")"
dashboard="$(sed -n 's/^Dashboard: *\(http[^ ]*\)$/\1/p' "$log")"
[ -n "$password" ] && [ -n "$url" ] && [ -n "$dashboard" ] \
    || { echo "FAIL: the demo did not print a VMS password, an RTSP URL and a dashboard" >&2; exit 1; }

# The checks' own tools, installed only now, so that they cannot hide a package the README's
# command forgot.
# shellcheck source=deploy/lib.sh
. deploy/lib.sh
apt_install ffmpeg curl

echo "==> [readme] ffprobe $url (as vms)"
probe="$(timeout 60 ffprobe -v error -rtsp_transport tcp -select_streams v:0 \
    -show_entries stream=codec_name,width,height -of csv=p=0 \
    "${url/rtsp:\/\//rtsp://vms:$password@}")"
echo "    $probe"
[[ "$probe" =~ ^(h264|hevc),[0-9]+,[0-9]+ ]] \
    || { echo "FAIL: ffprobe did not read a video stream from $url" >&2; exit 1; }
echo "ok: the printed stream plays"

echo "==> [readme] curl $dashboard (as a browser: redirected to the sign-in page)"
# Trusting exactly the certificate the demo printed, when it serves HTTPS.
certificate="$(sed -n 's/^  certificate: *\([^ ]*\).*$/\1/p' "$log")"
trust=()
if [ -n "$certificate" ]; then trust=(--cacert "$certificate"); fi
page="$(curl --fail --silent --show-error --max-time 20 "${trust[@]}" --location \
    --header "Accept: text/html" "$dashboard")"
grep -qi "password" <<< "$page" \
    || { echo "FAIL: the dashboard did not serve its sign-in page" >&2; exit 1; }
echo "ok: the dashboard serves its sign-in page"

echo "==> [readme] SIGINT"
kill -INT -- "-$demo_pid"
code=""
for _ in $(seq 100); do
    if ! kill -0 "$demo_pid" 2>/dev/null; then
        wait "$demo_pid" && code=0 || code=$?
        break
    fi
    sleep 0.1
done
[ -n "$code" ] || { echo "FAIL: the demo did not stop within 10 s of SIGINT" >&2; exit 1; }
[ "$code" = 0 ] || { tail -20 "$log"; echo "FAIL: the demo exited $code on SIGINT" >&2; exit 1; }
demo_pid=""
echo "ok: the demo stopped on SIGINT with exit 0"
