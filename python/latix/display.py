"""Printing search hits for a terminal: ranked hits with the words that won each query token's
maximum highlighted (:func:`print_hits`, used by ``latix search`` and the demo) and the text
window holding most of the matched weight (:func:`highlight`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, TextIO

from latix.collection import _word

__all__ = ["highlight", "print_hits"]

_BOLD, _RESET = "\x1b[1;33m", "\x1b[0m"


def print_hits(
    col: Any,
    query: str,
    k: int,
    *,
    color: bool = False,
    width: int = 400,
    n_threads: int | None = None,
    where: Any = None,
    mode: str = "late",
    out: TextIO | None = None,
) -> None:
    """Search a collection and print ranked hits with highlighted, explained text.

    Args:
        col: an open :class:`~latix.collection.Collection`.
        query: the query text.
        k: hits to show.
        color: ANSI highlighting (else matched words are shown in ``[brackets]``).
        width: characters of document text shown per hit.
        n_threads: search threads.
        where: a metadata filter.
        mode: ``"late"``, ``"keyword"`` or ``"hybrid"``.
        out: stream (default stdout).
    """
    out = out or sys.stdout
    hits = col.search(query, k, where=where, mode=mode, explain=True, n_threads=n_threads)
    if not hits:
        print("no results", file=out)
        return
    for rank, h in enumerate(hits, start=1):
        where_ = f"  passage {h.passage}" if h.span is not None else ""
        print(f"{rank:>3}. {h.id}  score {h.score:.3f}{where_}", file=out)
        if h.explanation:
            why = ", ".join(
                f"{m.query_token}→{m.text or '·'} {m.score:.2f}" for m in h.explanation[:8]
            )
            print(f"     why: {why}", file=out)
            spans = [(m.start, m.end, m.score) for m in h.explanation if m.start >= 0]
        else:
            spans = []
        text = h.text
        if h.span is not None and not spans:
            a, b = h.span
            spans = [(a, min(b, a + 1), 0.0)]
        print("     " + highlight(text, spans, color=color, width=width), file=out)


def highlight(
    text: str, spans: Sequence[tuple[int, int, float]], *, color: bool = False, width: int = 400
) -> str:
    """Mark the spans in ``text``; show the ``width``-character window holding most of their weight.

    Args:
        text: the document text.
        spans: (start, end, weight) character spans.
        color: ANSI bold yellow if True, else ``[brackets]``.
        width: maximum characters shown (an ellipsis marks cut ends).
    """
    start = 0
    if len(text) > width and spans:
        # window start that covers the most matched weight
        best_w = -1.0
        for a, _, _ in spans:
            s0 = max(0, min(a - width // 4, len(text) - width))
            w = sum(s for x, y, s in spans if x >= s0 and y <= s0 + width)
            if w > best_w:
                best_w, start = w, s0
    end = min(len(text), start + width)
    marks = sorted({_word(text, a, b) for a, b, _ in spans if a >= start and b <= end and b > a})
    parts: list[str] = []
    cur = start
    for a, b in marks:
        if a < cur:
            continue
        parts.append(text[cur:a])
        parts.append(f"{_BOLD}{text[a:b]}{_RESET}" if color else f"[{text[a:b]}]")
        cur = b
    parts.append(text[cur:end])
    s = "".join(parts).replace("\n", " ")
    return ("…" if start > 0 else "") + s + ("…" if end < len(text) else "")
