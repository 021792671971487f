"""The mutation-testing scripts: scripts/unmoved-diff.py leaves out of the diff cargo-mutants reads
the lines that only moved, and keeps every line that changed, moved or not;
scripts/mutants-skip-annotations.py tells the mutants inside type annotations."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO

SCRIPT = REPO / "scripts" / "unmoved-diff.py"
MOVED = "\n".join(f"    let value_{i} = compute_something_long({i}, {i * 2});" for i in range(8))
BEFORE = (
    'fn keep() {\n    println!("stays in the first file");\n}\n\n'
    f"fn moved() {{\n{MOVED}\n}}\n\n"
    "fn changed() {\n    let x = 1;\n}\n"
)


def git(repo: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args]
    return subprocess.run(command, cwd=repo, check=True, capture_output=True, text=True).stdout


def repo_with_split(tmp_path: Path, change_in_move: bool) -> Path:
    """A commit of a.rs, then (uncommitted) `moved` cut from a.rs into a module of b.rs, indented
    one level deeper, with one line of it edited when `change_in_move`; and one line of a.rs edited."""
    git(tmp_path, "init", "-q")
    (tmp_path / "a.rs").write_text(BEFORE)
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "one")
    start, end = BEFORE.index("fn moved"), BEFORE.index("fn changed")
    (tmp_path / "a.rs").write_text(BEFORE[:start] + BEFORE[end:].replace("x = 1", "x = 2"))
    body = BEFORE[start:end]
    if change_in_move:
        body = body.replace("compute_something_long(3, 6)", "compute_something_else(3, 6)")
    indented = "\n".join("    " + line if line else line for line in body.splitlines())
    (tmp_path / "b.rs").write_text(f"mod inner {{\n{indented}\n}}\n")
    git(tmp_path, "add", "-A")
    return tmp_path


def unmoved_diff(repo: Path) -> str:
    proc = subprocess.run([sys.executable, SCRIPT, "HEAD", "."], cwd=repo, check=True, capture_output=True, text=True)
    return proc.stdout


def added(diff: str, repo: Path) -> dict[str, list[str]]:
    """Added lines by file, checked against the files as cargo-mutants checks a diff: each hunk's
    new side, line for line, is the file's text at the lines its header names."""
    out: dict[str, list[str]] = {}
    lines = diff.splitlines()
    i = 0
    path = ""
    while i < len(lines):
        line = lines[i]
        if line.startswith("+++ b/"):
            path = line[len("+++ b/") :]
            out[path] = []
        header = re.match(r"^@@ -\d+,\d+ \+(\d+),(\d+) @@", line)
        if header is not None:
            first, count = int(header.group(1)), int(header.group(2))
            hunk = lines[i + 1 : i + 1 + count]
            text = (repo / path).read_text().splitlines()
            assert [h[1:] for h in hunk] == text[first - 1 : first - 1 + count]
            assert all(h[:1] in " +" for h in hunk)
            out[path] += [h[1:].strip() for h in hunk if h.startswith("+")]
            i += count
        i += 1
    return out


def test_a_moved_function_is_left_out_and_the_edits_kept(tmp_path: Path) -> None:
    repo = repo_with_split(tmp_path, change_in_move=True)
    assert added(unmoved_diff(repo), repo) == {
        "a.rs": ["let x = 2;"],
        "b.rs": ["mod inner {", "let value_3 = compute_something_else(3, 6);", "}"],
    }


def test_a_pure_move_leaves_only_the_new_module_lines(tmp_path: Path) -> None:
    repo = repo_with_split(tmp_path, change_in_move=False)
    assert added(unmoved_diff(repo), repo) == {"a.rs": ["let x = 2;"], "b.rs": ["mod inner {", "}"]}


def test_plain_git_diff_would_count_the_move(tmp_path: Path) -> None:
    """The control: without the filter, all ten lines of the moved function count as added."""
    repo = repo_with_split(tmp_path, change_in_move=False)
    plain = git(repo, "diff", "--no-renames", "HEAD", "--", "b.rs")
    assert sum(1 for line in plain.splitlines() if line.startswith("+") and "value_" in line) == 8


def test_no_change_prints_nothing(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / "a.rs").write_text(BEFORE)
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "one")
    assert unmoved_diff(tmp_path) == ""


def skip_annotations_script():
    spec = importlib.util.spec_from_file_location("skip_annotations", REPO / "scripts" / "mutants-skip-annotations.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ANNOTATED = """from __future__ import annotations

x: int | None = 1 | 2


def f(a: str | None, b=3 | 4) -> list[int] | None:
    return [a | b]
"""


def operator_positions(source: str, operator: str) -> list[tuple[int, int]]:
    """(line, column) of every `operator` in `source`, counted by hand from the text."""
    return [
        (number, column)
        for number, line in enumerate(source.splitlines(), 1)
        for column, char in enumerate(line)
        if char == operator
    ]


def test_only_the_operators_inside_annotations_are_told():
    script = skip_annotations_script()
    spans = script.annotation_spans(ANNOTATED)
    told = [p for p in operator_positions(ANNOTATED, "|") if script.inside(p, (p[0], p[1] + 1), spans)]
    # Line 3: `int | None` (the annotation), not `1 | 2` (the value); line 6: the argument's
    # annotation and the return annotation, not the default `3 | 4`; line 7: none.
    assert told == [(3, 7), (6, 13), (6, 43)]


def test_without_the_future_import_annotations_are_evaluated_and_keep_their_mutants():
    script = skip_annotations_script()
    assert script.annotation_spans(ANNOTATED.replace("from __future__ import annotations", "")) == []
