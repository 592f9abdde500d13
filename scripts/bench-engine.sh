#!/usr/bin/env bash
# Engine benchmark: tract (what model-inference runs) beside onnxruntime on the
# same model files and inputs, both from Rust via criterion. onnxruntime is
# loaded at run time from the PyPI wheel's libonnxruntime.so (the ort crate's
# download feature cannot work offline), so this needs python3 + pip once.
#
#   scripts/bench-engine.sh              # all groups
#   scripts/bench-engine.sh engine/v2    # criterion filter
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${ORT_DYLIB_PATH:-}" ]; then
    venv=target/ort-venv
    if [ ! -x "$venv/bin/python" ]; then
        command -v python3 >/dev/null || { echo "bench-engine.sh: needs python3 (for the onnxruntime wheel) or ORT_DYLIB_PATH" >&2; exit 1; }
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install -q onnxruntime==1.31.1
    ORT_DYLIB_PATH=$(find "$venv"/lib -path '*/onnxruntime/capi/libonnxruntime.so.*' -print -quit)
fi
export ORT_DYLIB_PATH
echo "onnxruntime: $ORT_DYLIB_PATH" >&2
cargo bench -p model-inference --features ort-bench --bench engine -- "$@"
