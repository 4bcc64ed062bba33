#!/usr/bin/env bash
# Install onvif-gateway as a system service on Debian 12, from this checkout.
#
#   sudo bash deploy/install.sh              # install, or upgrade an existing install
#   sudo bash deploy/install.sh --uninstall  # remove it; keeps /etc and /var/lib
#   sudo bash deploy/install.sh --uninstall --purge   # ... and those, and the user
#
# What it does (and, with --uninstall, undoes):
#   - the Debian packages the gateway needs (python3-venv, gcc, python3-dev, nftables, ...);
#   - the system user and group onvif-gateway;
#   - the gateway in its own venv, /opt/onvif-gateway, with the relay's C part compiled, and
#     /usr/local/bin/onvif-gateway pointing at it;
#   - /etc/onvif-gateway (root:onvif-gateway 0750) with gateway.toml written by
#     'onvif-gateway init' (0640 root:onvif-gateway) unless one exists: an existing
#     configuration is never touched;
#   - /var/lib/onvif-gateway (onvif-gateway 0700), the state directory;
#   - the systemd units onvif-gateway.service and onvif-gateway-egress-counters.{service,timer}
#     and the docs in /usr/share/doc/onvif-gateway. It neither enables nor starts them; an
#     upgrade restarts a running gateway.
#
# --root DIR installs the same tree under DIR instead of / (every path in the units and the
# configuration points into DIR), without touching systemd: for CI and packaging.
set -euo pipefail

cd "$(dirname "$0")/.."
checkout="$PWD"
root=""
uninstall=false
purge=false
while [ $# -gt 0 ]; do
    case "$1" in
        --root) root="$(realpath -m "${2:?--root needs a directory}")"; shift 2 ;;
        --root=*) root="$(realpath -m "${1#--root=}")"; shift ;;
        --uninstall) uninstall=true; shift ;;
        --purge) purge=true; shift ;;
        -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ "$root" = / ] && root=""
if [ "$(id -u)" != 0 ]; then
    echo "install.sh: run it as root (sudo bash deploy/install.sh)" >&2
    exit 2
fi

user=onvif-gateway
venv="$root/opt/onvif-gateway"
etc="$root/etc/onvif-gateway"
state="$root/var/lib/onvif-gateway"
units="$root/etc/systemd/system"
docs="$root/usr/share/doc/onvif-gateway"
link="$root/usr/local/bin/onvif-gateway"
unit_names=(onvif-gateway.service onvif-gateway-egress-counters.service
            onvif-gateway-egress-counters.timer)
systemd=false
if [ -z "$root" ] && [ -d /run/systemd/system ]; then systemd=true; fi

if $uninstall; then
    if $systemd; then
        systemctl disable --now "${unit_names[@]}" 2>/dev/null || true
    fi
    for unit in "${unit_names[@]}"; do rm -f "$units/$unit"; done
    $systemd && systemctl daemon-reload
    rm -rf "$venv" "$docs"
    [ -L "$link" ] && rm -f "$link"
    if $purge; then
        rm -rf "$etc" "$state"
        if [ -z "$root" ] && id -u "$user" >/dev/null 2>&1; then userdel "$user"; fi
        if [ -z "$root" ] && getent group "$user" >/dev/null; then groupdel "$user" || true; fi
        echo "==> removed onvif-gateway, its configuration, state and user"
    else
        echo "==> removed onvif-gateway; kept $etc and $state (--purge removes them)"
    fi
    exit 0
fi

# shellcheck source=deploy/lib.sh
. deploy/lib.sh
apt_install "${RUNTIME_PACKAGES[@]}"

if ! getent group "$user" >/dev/null; then
    echo "==> creating group $user"
    groupadd --system "$user"
fi
if ! id -u "$user" >/dev/null 2>&1; then
    echo "==> creating user $user"
    useradd --system --gid "$user" --home-dir /var/lib/onvif-gateway --no-create-home \
        --shell /usr/sbin/nologin --comment "onvif-gateway service" "$user"
fi

install -d -m 0755 "$root/opt" "$(dirname "$link")" "$units" "$docs"
# Debian's own Python: the service user must be able to run the interpreter the venv links
# to, which a Python under a home directory (pyenv, conda) would not allow.
PYTHON="${PYTHON:-/usr/bin/python3}" bash deploy/build-venv.sh "$venv" "$checkout"
ln -sfn "$venv/bin/onvif-gateway" "$link"

install -d -m 0750 -o root -g "$user" "$etc"
install -d -m 0700 -o "$user" -g "$user" "$state"
if [ -e "$etc/gateway.toml" ]; then
    echo "==> keeping the existing $etc/gateway.toml"
else
    "$venv/bin/onvif-gateway" init --output "$etc/gateway.toml" --state-dir "$state"
fi

# The units name /opt, /etc and /var/lib; under --root they name the same places in DIR.
for unit in "${unit_names[@]}"; do
    sed -e "s|/opt/onvif-gateway|$venv|g" -e "s|/etc/onvif-gateway|$etc|g" \
        -e "s|/var/lib/onvif-gateway|$state|g" -e "s|/usr/share/doc/onvif-gateway|$docs|g" \
        "deploy/$unit" > "$units/$unit.tmp"
    chmod 0644 "$units/$unit.tmp"
    mv "$units/$unit.tmp" "$units/$unit"
done
install -m 0644 README.md docs/*.md "$docs/"

if $systemd; then
    systemctl daemon-reload
    if systemctl is-active --quiet onvif-gateway.service; then
        echo "==> restarting the running gateway"
        systemctl restart onvif-gateway.service
    fi
fi
cat <<NEXT
==> installed $("$venv/bin/onvif-gateway" --version)
Next:
  edit $etc/gateway.toml (one [[camera]] per camera; 'onvif-gateway discover' helps)
  sudo -u $user $link check --config $etc/gateway.toml
  systemctl enable --now onvif-gateway.service
NEXT
