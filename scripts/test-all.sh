#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs what it needs (redis-server,
# PostgreSQL and chromium from Debian's packages; a Python venv with XGBoost, LightGBM, Playwright and
# pytest, under .venv), checks
# formatting and lints, runs the Rust tests (those that need Redis start their own
# redis-server on a free local port), then the Python parity tests against the freshly built
# `fraud` binary, then builds the `fraudscore` Python package and runs its tests, then drives
# the review console in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export CARGO_TERM_COLOR=never

step() { printf '\n==> %s\n' "$*"; }

step "redis-server, PostgreSQL and chromium (Debian packages)"
missing=""
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
# The PostgreSQL tests run initdb and postgres from here (a cluster of their own, on a free
# port, as `nobody` when the tests run as root).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$missing postgresql"
[ -x /usr/bin/chromium ] || missing="$missing chromium"
if [ -n "$missing" ]; then
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    # shellcheck disable=SC2086
    $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# The tests start their own servers; the one the package may have started is not used.
redis-server --version
ls /usr/lib/postgresql/*/bin/initdb

step "Python venv (.venv) with the reference libraries"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements-test.txt

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "fraud-core alone: the scoring engine without Redis or the trainer (--no-default-features)"
cargo clippy -p fraud-core --no-default-features --lib --locked -- -D warnings

step "the service alone: fraud-server without the data tools (--no-default-features)"
cargo clippy -p fraud-server --no-default-features --lib --bins --locked -- -D warnings

step "cargo doc (no broken or private links)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

step "cargo test"
cargo test --workspace --locked

step "Python parity tests (real XGBoost / LightGBM against the fraud binary)"
FRAUD_BIN="$root/target/debug/fraud" .venv/bin/python -m pytest -q fraud-core/tests/parity

step "fraudscore wheel (scripts/build-wheels.sh), installed into a clean venv, its pytest suite"
rm -f target/wheels/fraudscore-*.whl
PYTHON=.venv/bin/python scripts/build-wheels.sh
wheel=$(ls target/wheels/fraudscore-*.whl)
python3 -m venv --clear target/wheel-venv
target/wheel-venv/bin/python -m pip install --quiet --upgrade pip
target/wheel-venv/bin/python -m pip install --quiet "$wheel[pandas,sklearn,polars,plot,arrow]" \
    -r fraud-py/requirements-test.txt
# The tests drive the `fraud` command the wheel installed (the same code as the binary).
(cd target && FRAUD_BIN="$root/target/wheel-venv/bin/fraud" \
    "$root/target/wheel-venv/bin/python" -m pytest -q "$root/fraud-py/tests")
# The tooling venv gets the same wheel for the type checks below.
.venv/bin/python -m pip install --quiet --force-reinstall --no-deps "$wheel"

step "Typed public API (mypy on the examples and the typing checks)"
.venv/bin/python -m mypy --ignore-missing-imports fraud-py/examples fraud-py/tests/typing_check.py

step "Review console end to end (headless Chromium driven by Playwright)"
FRAUD_BIN="$root/target/debug/fraud" CHROMIUM=/usr/bin/chromium \
    .venv/bin/python -m pytest -q fraud-server/tests/console
echo "screenshots: $root/target/console-screenshots/"

step "all tests passed"
