#!/usr/bin/env bash
# Mutation testing of one module of the Python layer with cosmic-ray, judged by the tests named.
#
#   scripts/mutants-python.sh [--recheck] MODULE TEST_FILE... [PYTEST_ARGS...]
#   scripts/mutants-python.sh python/heartmula_burn/_presets/heartmula/__init__.py test_oracles.py test_pack_cli.py
#
# Mutants are applied in a scratch worktree of HEAD (commit first), never in this checkout, with the
# compiled core taken from the virtual environment tests/run.sh made (VENV, default .venv). Prints
# the surviving mutants and the totals; the session database stays in target/mutants-python/ for `cr-report`.
#
# --recheck: the survivors of the module's last run, judged again by the tests of HEAD. Each is
# applied alone and the tests named are run: a minute per ten survivors, where a whole run takes an
# hour a module here, so it is how a test written for the survivors is shown to kill them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
recheck=false
if [ "${1:-}" = --recheck ]; then
    recheck=true
    shift
fi
[ $# -ge 2 ] || { echo "usage: $0 [--recheck] MODULE TEST_FILE..." >&2; exit 2; }
module=$1
shift
venv=$(realpath -m "${VENV:-.venv}")
out=$PWD/target/mutants-python
mkdir -p "$out"

version=8.7.0
if ! "$venv/bin/cosmic-ray" --version 2>/dev/null | grep -q "$version"; then
    "$venv/bin/python" -m pip install --quiet "cosmic-ray==$version"
fi
core=$("$venv/bin/python" -c 'import heartmula_burn._core as c; print(c.__file__)')

work=$(mktemp -d)
trap 'git worktree remove --force "$work" >/dev/null 2>&1 || rm -rf "$work"' EXIT
git worktree add --quiet --detach "$work" HEAD
cp "$core" "$work/python/heartmula_burn/"

# The module path as one name (_presets/heartcodec/forward.py -> _presets_heartcodec_forward): two
# models' forward.py must not share a session.
name=$(echo "${module#python/heartmula_burn/}" | sed 's#/#_#g; s#\.py$##')
config=$out/$name.toml
session=$out/$name.sqlite

if $recheck; then
    [ -f "$session" ] || { echo "mutants-python: no session $session to recheck (run without --recheck first)" >&2; exit 1; }
    # One line per survivor: operator, occurrence and line (the module is the session's own).
    "$venv/bin/cosmic-ray" dump "$session" | "$venv/bin/python" -c '
import json, sys
for line in sys.stdin:
    job, result = json.loads(line)
    if result and result.get("test_outcome") == "survived":
        for m in job["mutations"]:
            print(m["operator_name"], m["occurrence"], m["start_pos"][0])
' >"$work/survivors"
    killed=0
    survived=0
    while read -r operator occurrence line; do
        (cd "$work" && "$venv/bin/cosmic-ray" apply "$module" "$operator" "$occurrence" >/dev/null)
        if (cd "$work/tests" && PYTHONPATH=../python "$venv/bin/python" -m pytest -x -q -p no:cacheprovider "$@" \
            >/dev/null 2>&1); then
            survived=$((survived + 1))
            echo "survived  line $line  $operator #$occurrence"
        else
            killed=$((killed + 1))
            echo "killed    line $line  $operator #$occurrence"
        fi
        git -C "$work" checkout --quiet -- "$module"
    done <"$work/survivors"
    echo "mutants-python: $((killed + survived)) survivors of $name: $killed killed now, $survived survive"
    exit 0
fi

cat >"$config" <<EOF
[cosmic-ray]
module-path = "$module"
timeout = 300.0
excluded-modules = []
# The source tree first on the path, so that the mutated file is the one imported.
test-command = "bash -c 'cd tests && PYTHONPATH=../python $venv/bin/python -m pytest -x -q -p no:cacheprovider $*'"

[cosmic-ray.distributor]
name = "local"

# cosmic-ray replaces each binary operator by every other one (11 mutants per '+'); one sample of
# them keeps the replacements by +, - and * (as mutmut and cargo-mutants do): every number,
# comparison, boolean, loop and decorator mutant is kept.
[cosmic-ray.filters.operators-filter]
exclude-operators = ["core/ReplaceBinaryOperator_.*_(Div|FloorDiv|Mod|Pow|LShift|RShift|BitAnd|BitOr|BitXor)$"]
EOF
rm -f "$session"
(
    cd "$work"
    "$venv/bin/cosmic-ray" init "$config" "$session"
    "$venv/bin/cr-filter-operators" "$session" "$config"
    "$venv/bin/python" scripts/mutants-skip-annotations.py "$session" "$module"  # inert under PEP 563
    "$venv/bin/cosmic-ray" baseline "$config"
    "$venv/bin/cosmic-ray" exec "$config" "$session"
)
# The survivors with their diffs, then the totals (cr-report's last lines).
"$venv/bin/cr-report" "$session" --surviving-only --show-diff
"$venv/bin/cr-report" "$session" | tail -n 3
# A mutant the tests could not judge (the command did not run) is a broken run, not a caught mutant.
incompetent=$("$venv/bin/cosmic-ray" dump "$session" | grep -c '"test_outcome": "incompetent"' || true)
if [ "$incompetent" != 0 ]; then
    echo "mutants-python: $incompetent mutant(s) could not be tested (see cosmic-ray dump $session)" >&2
    exit 1
fi
