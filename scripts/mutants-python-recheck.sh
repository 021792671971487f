#!/usr/bin/env bash
# The survivors of an earlier cosmic-ray run (scripts/mutants-python.sh), judged again by the tests
# of HEAD: each surviving mutant is applied alone in a scratch worktree and the tests named are run.
# A whole run takes an hour a module here; this takes a minute per ten survivors, so it is how a
# test written for the survivors is shown to kill them.
#
#   scripts/mutants-python-recheck.sh MODULE TEST_FILE... [PYTEST_ARGS...]
#
# MODULE names the session as mutants-python.sh does (target/mutants-python/<name>.sqlite). Prints
# each survivor as killed or survived, then the counts; fails when the session is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ $# -ge 2 ] || { echo "usage: $0 MODULE TEST_FILE..." >&2; exit 2; }
module=$1
shift
venv=$(realpath -m "${VENV:-.venv}")
name=$(echo "${module#python/heartmula_burn/}" | sed 's#/#_#g; s#\.py$##')
session=$PWD/target/mutants-python/$name.sqlite
[ -f "$session" ] || { echo "mutants-python-recheck: no session $session (run mutants-python.sh first)" >&2; exit 1; }
core=$("$venv/bin/python" -c 'import heartmula_burn._core as c; print(c.__file__)')

work=$(mktemp -d)
trap 'git worktree remove --force "$work" >/dev/null 2>&1 || rm -rf "$work"' EXIT
git worktree add --quiet --detach "$work" HEAD
cp "$core" "$work/python/heartmula_burn/"

# One line per survivor: operator and occurrence (the module is the session's own).
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
echo "mutants-python-recheck: $((killed + survived)) survivors of $name: $killed killed now, $survived survive"
