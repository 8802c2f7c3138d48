#!/usr/bin/env bash
# Side-by-side comparison of fraud-core with XGBoost, LightGBM, Treelite/TL2cgen and lleaves.
# Installs the engines into .venv, builds the release `fraud` binary, runs compare.py.
# Extra arguments go to compare.py (e.g. --rows 200000 for a quicker run).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r benches/compare/requirements.txt
cargo build --release -p fraud-server
exec .venv/bin/python benches/compare/compare.py --fraud target/release/fraud "$@"
