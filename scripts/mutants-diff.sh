#!/usr/bin/env bash
# Mutation testing of what changed: cargo-mutants on the lines of the Rust core changed since BASE,
# judged by the core's own `cargo test`. Fails when a mutant survives (missed or timed out). Lines
# that only moved (a module split) are not changes: scripts/unmoved-diff.py leaves them out.
#
#   scripts/mutants-diff.sh [BASE]     BASE: a commit; default: the newest release tag (v*), or
#                                      without one, the parent of the last commit that changed
#                                      rust/core/src (so the core's latest change is always tested)
#
# A whole run of the core (774 mutants) takes hours on 2 cores; the lines of one change take
# minutes, so this is what the test run does. cargo-mutants is installed under target/ when needed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ $# -ge 1 ]; then
    base=$1
elif ! base=$(git describe --tags --abbrev=0 --match 'v*' 2>/dev/null); then
    base=$(git log -1 --format=%H -- rust/core/src)~1
fi
if ! git rev-parse --verify --quiet "$base^{commit}" >/dev/null; then
    echo "mutants-diff: no commit '$base' to compare with (a shallow clone?): not run"
    exit 0
fi
diff=$(mktemp)
trap 'rm -f "$diff"' EXIT
python3 scripts/unmoved-diff.py "$base" rust/core/src >"$diff"
if [ ! -s "$diff" ]; then
    echo "mutants-diff: rust/core/src unchanged since $(git rev-parse --short "$base") but for moved lines: no mutants to run"
    exit 0
fi

version=27.1.0
tool=$PWD/target/mutants-tool
if ! "$tool/bin/cargo-mutants" mutants --version 2>/dev/null | grep -q "$version"; then
    echo "mutants-diff: installing cargo-mutants $version under $tool"
    cargo install --quiet --locked --root "$tool" "cargo-mutants@$version"
fi
# Each mutant gets a fresh copy of the tree built by cargo; timeouts are judged against the
# measured time of the unmutated tests (cargo-mutants' default multiplier), at least 60 s.
"$tool/bin/cargo-mutants" mutants -p heartmula-burn-core --in-diff "$diff" --minimum-test-timeout 60 \
    --output target/mutants-diff --no-shuffle -j 1
