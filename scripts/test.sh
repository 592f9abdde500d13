#!/usr/bin/env bash
# Runs every test of the workspace. Needs a Rust toolchain, Redis (tests start
# their own redis-server processes), Chromium with ChromeDriver (the web page
# is tested in a real headless browser) and Prometheus (the compose config is
# run against the real services); it checks for everything up front and says
# exactly how to get what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
need() { # need <command> <how to install>
    command -v "$1" >/dev/null 2>&1 || missing+=("$1 — $2")
}
need cargo "install Rust from https://rustup.rs"
need redis-server "Debian/Ubuntu: sudo apt-get install -y redis-server; macOS: brew install redis"
need redis-cli "comes with redis-server (Debian: redis-tools)"
# The browser test drives these exact paths (Debian's packages).
[[ -x /usr/bin/chromium ]] || missing+=("/usr/bin/chromium — Debian/Ubuntu: sudo apt-get install -y chromium")
[[ -x /usr/bin/chromedriver ]] || missing+=("/usr/bin/chromedriver — Debian/Ubuntu: sudo apt-get install -y chromium-driver")
[[ -x /usr/bin/prometheus ]] || missing+=("/usr/bin/prometheus — Debian/Ubuntu: sudo apt-get install -y prometheus")

if ((${#missing[@]})); then
    echo "scripts/test.sh: missing prerequisites:" >&2
    printf '  - %s\n' "${missing[@]}" >&2
    exit 1
fi

# Debug builds with dependencies at opt-level 2 (see Cargo.toml): tract is
# unusably slow at opt-level 0 and takes ~9 minutes at release settings.
cargo test --workspace --locked "$@"
echo "browser screenshots: target/tmp/browser/"
