#!/usr/bin/env bash
# Build the gateway's runtime venv: deploy/build-venv.sh VENV [SOURCE]
#
# Installs SOURCE (a checkout, default: this one) with its runtime dependencies into VENV
# (created if missing; an existing one is upgraded in place, so a running gateway keeps its
# files until it restarts), compiles the relay path's C part, and fails unless the installed
# gateway reports it (`onvif-gateway --version` says "span walks: C"). Used by
# deploy/install.sh and by the Containerfile's build stage; needs python3-venv, gcc and
# python3-dev.
set -euo pipefail

venv="${1:?usage: build-venv.sh VENV [SOURCE]}"
source_dir="${2:-$(cd "$(dirname "$0")/.." && pwd)}"
python_bin="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "==> creating $venv"
    "$python_bin" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --no-cache-dir --upgrade pip
echo "==> installing $source_dir into $venv"
# --force-reinstall --no-deps: the same version number from a newer checkout still replaces
# the installed files; the second call brings in any dependency the new version added.
"$venv/bin/python" -m pip install -q --no-cache-dir --force-reinstall --no-deps "$source_dir"
"$venv/bin/python" -m pip install -q --no-cache-dir "$source_dir"
version="$("$venv/bin/onvif-gateway" --version)"
echo "==> $version"
case "$version" in
    *"span walks: C"*) ;;
    *)
        echo "build-venv: the C part of the relay path was not built (gcc and python3-dev?)" >&2
        exit 1
        ;;
esac
