# Shared by deploy/bootstrap.sh and deploy/install.sh (sourced, not run): the Debian packages
# the gateway needs at run time and build time, and how they are installed.

# FFmpeg is bundled in PyAV's wheels; nftables/iproute2 for egress isolation; gcc and the
# Python headers build the C part of the relay path.
RUNTIME_PACKAGES=(python3-venv python3-dev gcc nftables iproute2 ca-certificates)

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# apt_install PKG...: install the packages that are not installed yet (one apt-get run).
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "==> apt-get install ${missing[*]}"
        $SUDO apt-get update -q
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
            "${missing[@]}"
    fi
}
