#!/usr/bin/env python3
"""Marks the pending mutants of a cosmic-ray session that lie inside a type annotation as skipped.

    scripts/mutants-skip-annotations.py SESSION MODULE      run by mutants-python.sh after init

The package's modules start with `from __future__ import annotations` (PEP 563): annotations are
kept as strings and never evaluated at run time, so `str | None` mutated to `str - None` runs the
same program. Such a mutant can only survive; running it costs a whole test run (a sixth of
`_sanity.py`'s mutants). A module without that import keeps all its mutants."""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

Span = tuple[tuple[int, int], tuple[int, int]]


def annotation_spans(source: str) -> list[Span]:
    """(start, end) positions, as (line, column), of every annotation in the module."""
    tree = ast.parse(source)
    future = any(
        isinstance(node, ast.ImportFrom)
        and node.module == "__future__"
        and any(a.name == "annotations" for a in node.names)
        for node in tree.body
    )
    if not future:
        return []
    nodes: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.annotation is not None:
            nodes.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            nodes.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            nodes.append(node.annotation)
    return [((n.lineno, n.col_offset), (n.end_lineno or n.lineno, n.end_col_offset or 0)) for n in nodes]


def inside(start: tuple[int, int], end: tuple[int, int], spans: list[Span]) -> bool:
    return any(lo <= start and end <= hi for lo, hi in spans)


def skip_annotations(work_db: Any, module: Path) -> int:
    from cosmic_ray.work_item import WorkerOutcome, WorkResult  # installed by mutants-python.sh

    spans = annotation_spans(module.read_text())
    skipped = 0
    for item in work_db.pending_work_items:
        if item.mutations and all(inside(tuple(m.start_pos), tuple(m.end_pos), spans) for m in item.mutations):
            work_db.set_result(
                item.job_id,
                WorkResult(output="inside a type annotation (PEP 563)", worker_outcome=WorkerOutcome.SKIPPED),
            )
            skipped += 1
    return skipped


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.splitlines()[2].strip(), file=sys.stderr)
        return 2
    from cosmic_ray.work_db import WorkDB, use_db

    with use_db(argv[0], mode=WorkDB.Mode.open) as work_db:
        skipped = skip_annotations(work_db, Path(argv[1]))
    print(f"mutants-skip-annotations: {skipped} mutants inside annotations skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
