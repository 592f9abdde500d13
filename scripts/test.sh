#!/usr/bin/env bash
# Runs every test of the workspace. Needs a Rust toolchain, Redis (tests start
# their own redis-server processes), Chromium with ChromeDriver (the web page
# is tested in a real headless browser), Prometheus (the compose config is
# run against the real services) and Python 3 with venv (Triton's own
# clients, installed from PyPI into target/, are run against model-inference)
# and curl (docs/labs/'s command blocks are run as written).
# On Debian or Ubuntu it installs what is missing with apt-get (through sudo
# when not root), saying what first; elsewhere it names what is missing and
# how to get it.
#
# With a Docker engine running, the image is built and the compose stack is
# run for real (crates/mlmesh/tests/docker.rs); without one those tests say
# so and pass.
set -euo pipefail
cd "$(dirname "$0")/.."

# command-or-path  Debian package  how elsewhere
prereqs=(
    "redis-server redis-server brew install redis"
    "redis-cli redis-tools brew install redis"
    "/usr/bin/chromium chromium (Debian/Ubuntu's package: the browser test drives this path)"
    "/usr/bin/chromedriver chromium-driver (Debian/Ubuntu's package)"
    "/usr/bin/prometheus prometheus (Debian/Ubuntu's package)"
    "python3 python3 (Triton's own clients are run from a venv the test makes; pip fetches them from PyPI)"
    "python3-venv python3-venv (Debian/Ubuntu's package: python3 -m venv with pip)"
    "curl curl (docs/labs/'s command blocks are run as written, curl and all)"
)
have() {
    case "$1" in
        # Not a command: python3 can make a venv with pip in it.
        python3-venv) python3 -c 'import ensurepip, venv' >/dev/null 2>&1 ;;
        /*) [[ -x "$1" ]] ;;
        *) command -v "$1" >/dev/null 2>&1 ;;
    esac
}

command -v cargo >/dev/null 2>&1 || { echo "scripts/test.sh: cargo is missing: install Rust from https://rustup.rs" >&2; exit 1; }

missing=() packages=()
for p in "${prereqs[@]}"; do
    read -r what pkg how <<<"$p"
    have "$what" || { missing+=("$what — $pkg; $how"); packages+=("$pkg"); }
done

if ((${#packages[@]})) && command -v apt-get >/dev/null 2>&1; then
    sudo=()
    if [[ $(id -u) != 0 ]]; then
        command -v sudo >/dev/null 2>&1 || { echo "scripts/test.sh: not root and no sudo to install: ${packages[*]}" >&2; exit 1; }
        sudo=(sudo)
    fi
    echo "scripts/test.sh: installing with apt-get: ${packages[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${packages[@]}" >/dev/null
    missing=()
    for p in "${prereqs[@]}"; do
        read -r what pkg how <<<"$p"
        have "$what" || missing+=("$what — apt-get installed $pkg, but it is still not there")
    done
fi

if ((${#missing[@]})); then
    echo "scripts/test.sh: missing prerequisites:" >&2
    printf '  - %s\n' "${missing[@]}" >&2
    exit 1
fi

# Debug builds with dependencies at opt-level 2 (see Cargo.toml): tract is
# unusably slow at opt-level 0 and takes ~9 minutes at release settings.
cargo test --workspace --locked "$@"
echo "browser screenshots: target/tmp/browser/"
