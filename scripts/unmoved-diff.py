#!/usr/bin/env python3
"""`git diff BASE -- PATHS`, less the lines that only moved: what cargo-mutants --in-diff should test.

    scripts/unmoved-diff.py BASE PATH...      prints the diff on stdout

Splitting a module moves hundreds of lines unchanged; a plain diff shows them all as added, and
mutation testing them again costs hours while telling nothing new. Git's own move detection
(`--color-moved=blocks`: runs of at least 20 alphanumeric characters found removed elsewhere in the
diff, indentation changes allowed) decides what moved. An added line that moved becomes a context
line; a line that changed on the way stays added, so every function holding one is tested whole.
Removed lines are dropped (cargo-mutants reads only the new side) and hunk headers recounted; a
hunk or file left with no added line is dropped."""

from __future__ import annotations

import re
import subprocess
import sys

# A colour no other part of the diff uses: git paints added lines that moved with it.
MOVED_COLOR = "bold reverse blue"
MOVED_SGR = "\x1b[1;7;34m"
HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,\d+)? @@(.*)$")


def git_diff(base: str, paths: list[str], *options: str) -> list[str]:
    command = ["git", "-c", f"color.diff.newMoved={MOVED_COLOR}", "-c", "color.diff.new=green", "diff"]
    command += [*options, "--no-ext-diff", "--no-renames", "--ws-error-highlight=none", base, "--", *paths]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()


def unmoved(plain: list[str], colored: list[str]) -> list[str]:
    """The plain diff's lines, with moved added lines (told by `colored`, line for line the same
    diff) turned to context."""
    if len(plain) != len(colored):
        raise SystemExit("unmoved-diff: the plain and coloured diffs differ in length")
    out: list[str] = []
    header: list[str] = []  # the current file's header, printed with its first kept hunk
    hunk: list[str] = []
    # The current hunk's new-side start and the text after its "@@"; None in a file's header.
    at: tuple[str, str] | None = None

    def close_hunk() -> None:
        if at is not None and any(line.startswith("+") for line in hunk):
            start, suffix = at
            context = sum(1 for line in hunk if line.startswith(" "))
            out.extend(header)
            header.clear()
            out.append(f"@@ -{start},{context} +{start},{len(hunk)} @@{suffix}")
            out.extend(hunk)
        hunk.clear()

    for line, shown in zip(plain, colored):
        if line.startswith("diff --git "):
            close_hunk()
            header[:] = [line]
            at = None
        elif (match := HUNK.match(line)) is not None:
            close_hunk()
            at = match.group(1), match.group(2)
        elif at is None:
            header.append(line)
        elif line.startswith("+"):
            hunk.append(" " + line[1:] if shown.startswith(MOVED_SGR) else line)
        elif line.startswith(" "):
            hunk.append(line)
        # "-" lines and "\ No newline at end of file" carry nothing for the new side
    close_hunk()
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.splitlines()[2].strip(), file=sys.stderr)
        return 2
    base, paths = argv[0], argv[1:]
    plain = git_diff(base, paths, "--color=never")
    colored = git_diff(
        base, paths, "--color=always", "--color-moved=blocks", "--color-moved-ws=allow-indentation-change"
    )
    lines = unmoved(plain, colored)
    if lines:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
