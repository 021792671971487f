"""Text for people to read. Tensor names and metadata values are data from files anyone may have
written: printed raw, an escape sequence in one could retitle or clear the user's terminal, and a
newline would split a one-line error. Everything shown to a person passes through `shown`;
machine-readable output (--json) keeps the exact values."""

from __future__ import annotations

import unicodedata


def _escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def shown(text: object) -> str:
    """`str(text)` with control and format characters (C0, DEL, C1, bidirectional overrides,
    zero-width marks, line and paragraph separators) written as escapes, and backslashes doubled
    so that an escape cannot be faked."""
    out = []
    for ch in str(text):
        if ch == "\\":
            out.append("\\\\")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(_escape(ch))
        else:
            out.append(ch)
    return "".join(out)
