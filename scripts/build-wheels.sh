#!/usr/bin/env bash
# Builds the `fraudscore` wheels (Python package + native engine + the `fraud` command) with
# maturin, into target/wheels (or --out DIR). One wheel per target serves CPython 3.10 and
# newer (stable ABI, abi3).
#
#   scripts/build-wheels.sh                       # this machine's platform
#   scripts/build-wheels.sh --manylinux 2014      # Linux wheel for glibc >= 2.17 (needs zig:
#                                                 #   `pip install ziglang`, cross-links)
#   scripts/build-wheels.sh --target aarch64-unknown-linux-gnu --manylinux 2014
#   scripts/build-wheels.sh --target universal2-apple-darwin   # on macOS
#
# A Linux wheel built without --manylinux is tagged for this machine's glibc
# (manylinux_2_X, checked by maturin's auditwheel); release wheels use --manylinux 2014.
# Cross targets need their Rust standard library (`rustup target add TRIPLE`) and zig.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/wheels
python=${PYTHON:-python3}
targets=()
manylinux=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --target) targets+=("$2"); shift 2 ;;
        --manylinux) manylinux=$2; shift 2 ;;
        --python) python=$2; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "build-wheels: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if ! "$python" -m maturin --version >/dev/null 2>&1; then
    echo "build-wheels: maturin is not installed for $python (pip install 'maturin>=1.7,<2')" >&2
    exit 1
fi
args=(build --profile python --manifest-path fraud-py/Cargo.toml --out "$out" --locked)
if [ -n "$manylinux" ]; then
    args+=(--compatibility "manylinux$manylinux" --zig)
fi
if [ ${#targets[@]} -eq 0 ]; then
    targets=("")
fi
mkdir -p "$out"
for t in "${targets[@]}"; do
    if [ -n "$t" ]; then
        "$python" -m maturin "${args[@]}" --target "$t"
    else
        "$python" -m maturin "${args[@]}"
    fi
done
ls -1 "$out"/fraudscore-*.whl
