#!/usr/bin/env bash
# Set up onvif-gateway from a checkout on Debian 12 (bookworm) and either run the demo or
# the whole test suite.
#
#   bash deploy/bootstrap.sh install   # system packages + .venv with the gateway
#   bash deploy/bootstrap.sh test      # install + test dependencies, then lint and pytest
#
# Needs root or sudo for apt-get. Everything else goes into .venv and tests/node.
set -euo pipefail

cd "$(dirname "$0")/.."
mode="${1:-install}"
shift || true

# shellcheck source=deploy/lib.sh
. deploy/lib.sh
# Tests: real RTSP clients (ffmpeg, GStreamer), GStreamer's RTSP server (peer relay and
# reference server), onvif-util, promtool, Chromium for the dashboard, Node for npm clients,
# systemd-analyze for the unit files.
TEST_PACKAGES=(ffmpeg gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
               gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav
               gir1.2-gst-rtsp-server-1.0 python3-gi onvif-tools prometheus chromium
               chromium-driver procps systemd)
if [ "$mode" = test ] && ! command -v node >/dev/null 2>&1; then
    TEST_PACKAGES+=(nodejs npm)
fi

python_bin="${PYTHON:-python3}"
# venv_setup REQUIREMENT: .venv with the checkout installed editable ("." or ".[test]").
venv_setup() {
    local requirement="$1"
    if [ ! -x .venv/bin/python ]; then
        echo "==> creating .venv"
        "$python_bin" -m venv .venv
    fi
    .venv/bin/python -m pip install -q --upgrade pip
    echo "==> pip install -e $requirement"
    .venv/bin/python -m pip install -q -e "$requirement"
}

case "$mode" in
    install)
        apt_install "${RUNTIME_PACKAGES[@]}"
        venv_setup .
        echo "==> installed: .venv/bin/onvif-gateway ($(.venv/bin/onvif-gateway --version))"
        ;;
    test)
        apt_install "${RUNTIME_PACKAGES[@]}" "${TEST_PACKAGES[@]}"
        venv_setup ".[test]"
        if [ -f tests/node/package.json ]; then
            echo "==> npm ci (tests/node)"
            (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
        fi
        export PATH="$PWD/.venv/bin:$PATH"
        echo "==> ruff"
        ruff check gateway tests benchmarks
        ruff format --check gateway tests benchmarks
        echo "==> mypy"
        mypy gateway
        echo "==> pre-encoding simulator clips"
        python -m gateway.sim.runner --prepare test
        echo "==> pytest"
        python -m pytest -q -ra "$@"
        ;;
    *)
        echo "usage: $0 install|test [pytest args]" >&2
        exit 2
        ;;
esac
