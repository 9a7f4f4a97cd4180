"""Readers for document collections, queries and relevance judgements.

Corpora: BEIR JSONL (``_id``, ``title``, ``text``; indexed text is ``title + " " + text``), TREC
SGML-like files (``<DOC><DOCNO>id</DOCNO> ... </DOC>``, with or without ``<TEXT>``/``<TITLE>``
elements, as in the Vaswani collection), or a folder of ``.txt``/``.md`` files (id = path relative
to the folder). Any file may be gzip-compressed (``.gz``).

Bad records never stop a run silently: undecodable bytes, malformed JSON lines, records without id
or text are skipped and counted in :class:`ReadStats`, which keeps the first messages (file and
line)
for the user.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, cast

from latix.errors import InvalidArgumentError

__all__ = [
    "Document",
    "ReadStats",
    "CorpusFormatError",
    "detect_format",
    "read_corpus",
    "read_queries",
    "read_qrels",
]

_MAX_MESSAGES = 20


class CorpusFormatError(InvalidArgumentError):
    """A corpus, query or qrels file has an unknown or unreadable format."""


@dataclass(frozen=True)
class Document:
    """One document of a corpus.

    Attributes:
        id: the document's external id.
        text: its text (title and body joined by a space when the format has both).
        metadata: fields of the record other than its id, title and text (JSONL: the
            ``metadata`` object merged with the other top-level keys), or None.
    """

    id: str
    text: str
    metadata: dict[str, object] | None = None


@dataclass
class ReadStats:
    """What a reader skipped and why.

    Attributes:
        n_read: records yielded.
        n_skipped: records skipped.
        messages: the first skip reasons, each naming the file and line.
    """

    n_read: int = 0
    n_skipped: int = 0
    messages: list[str] = field(default_factory=list)

    def skip(self, message: str) -> None:
        """Count one skipped record and keep its reason (the first few only)."""
        self.n_skipped += 1
        if len(self.messages) < _MAX_MESSAGES:
            self.messages.append(message)


def _open_binary(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return cast(IO[bytes], gzip.open(path, "rb"))
    return open(path, "rb")


def _base_suffix(path: Path) -> str:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return Path(name).suffix.lower()


def detect_format(path: str | os.PathLike[str]) -> str:
    """Guess a corpus's format: ``"jsonl"``, ``"trec"`` or ``"folder"``.

    Files are recognised by extension (``.jsonl``, ``.json``, ``.trec``, ``.sgml``, ``.xml``, with
    optional ``.gz``) or, failing that, by their first non-blank bytes (``{`` or ``<DOC>``).

    Raises:
        CorpusFormatError: the path does not exist or its format is not recognised.
    """
    p = Path(path)
    if p.is_dir():
        return "folder"
    if not p.is_file():
        raise CorpusFormatError(f"corpus {p} not found")
    suffix = _base_suffix(p)
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix in (".trec", ".sgml", ".xml"):
        return "trec"
    try:
        with _open_binary(p) as f:
            head = f.read(4096).lstrip()
    except (OSError, EOFError) as e:
        raise CorpusFormatError(f"cannot read corpus {p}: {e}") from None
    if head.startswith(b"{"):
        return "jsonl"
    if head[:5].upper() == b"<DOC>":
        return "trec"
    raise CorpusFormatError(
        f"unknown corpus format for {p}: expected BEIR JSONL (.jsonl), TREC (<DOC>...</DOC>) "
        "or a folder of .txt/.md files"
    )


def read_corpus(path: str | os.PathLike[str], stats: ReadStats | None = None) -> Iterator[Document]:
    """Yield the documents of a corpus, in file order.

    Args:
        path: a BEIR JSONL file, a TREC file or a folder of ``.txt``/``.md`` files (``.gz`` ok).
        stats: receives counts and reasons of skipped records.

    Yields:
        Documents with non-empty text.

    Raises:
        CorpusFormatError: unknown format or unreadable file.
    """
    st = stats if stats is not None else ReadStats()
    fmt = detect_format(path)
    p = Path(path)
    if fmt == "jsonl":
        it = _read_jsonl_docs(p, st)
    elif fmt == "trec":
        it = _read_trec_docs(p, st)
    else:
        it = _read_folder(p, st)
    for doc in it:
        st.n_read += 1
        yield doc


def _read_jsonl_docs(p: Path, st: ReadStats) -> Iterator[Document]:
    for lineno, obj in _jsonl_objects(p, st):
        doc_id = obj.get("_id", obj.get("id"))
        if doc_id is None or (not isinstance(doc_id, (str, int))):
            st.skip(f"{p}:{lineno}: no '_id'")
            continue
        title = obj.get("title") or ""
        text = obj.get("text") or ""
        if not isinstance(title, str) or not isinstance(text, str):
            st.skip(f"{p}:{lineno}: 'title'/'text' must be strings")
            continue
        full = (title + " " + text).strip()
        if not full:
            st.skip(f"{p}:{lineno}: document {doc_id} has no text")
            continue
        meta: dict[str, object] = {}
        nested = obj.get("metadata")
        if isinstance(nested, dict):
            meta.update(nested)
        for key, value in obj.items():
            if key not in _JSONL_RESERVED:
                meta[key] = value
        yield Document(str(doc_id), full, meta or None)


_JSONL_RESERVED = frozenset({"_id", "id", "title", "text", "metadata"})


def _jsonl_objects(p: Path, st: ReadStats) -> Iterator[tuple[int, dict[str, object]]]:
    try:
        f = _open_binary(p)
    except OSError as e:
        raise CorpusFormatError(f"cannot read {p}: {e}") from None
    with f:
        try:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    st.skip(f"{p}:{lineno}: not UTF-8 ({e.reason} at byte {e.start})")
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    st.skip(f"{p}:{lineno}: malformed JSON ({e.msg}, column {e.colno})")
                    continue
                if not isinstance(obj, dict):
                    st.skip(f"{p}:{lineno}: expected a JSON object")
                    continue
                yield lineno, obj
        except (OSError, EOFError) as e:  # truncated or corrupt gzip
            raise CorpusFormatError(f"cannot read {p}: {e}") from None


_DOCNO = re.compile(rb"<DOCNO>\s*(.*?)\s*</DOCNO>", re.S | re.I)
_TAG = re.compile(rb"</?[A-Za-z][A-Za-z0-9_]*[^>]*>")


def _read_trec_docs(p: Path, st: ReadStats) -> Iterator[Document]:
    try:
        f = _open_binary(p)
    except OSError as e:
        raise CorpusFormatError(f"cannot read {p}: {e}") from None
    with f:
        buf: list[bytes] | None = None
        start = 0
        try:
            for lineno, line in enumerate(f, start=1):
                s = line.strip().upper()
                if s.startswith(b"<DOC>"):
                    buf, start = [line], lineno
                elif buf is not None:
                    buf.append(line)
                    if s.endswith(b"</DOC>"):
                        doc = _trec_doc(b"".join(buf), p, start, st)
                        if doc is not None:
                            yield doc
                        buf = None
        except (OSError, EOFError) as e:
            raise CorpusFormatError(f"cannot read {p}: {e}") from None
        if buf is not None:
            st.skip(f"{p}:{start}: <DOC> without </DOC> at end of file")


def _trec_doc(raw: bytes, p: Path, lineno: int, st: ReadStats) -> Document | None:
    m = _DOCNO.search(raw)
    if m is None:
        st.skip(f"{p}:{lineno}: <DOC> without <DOCNO>")
        return None
    body = raw[: m.start()] + b" " + raw[m.end() :]
    body = _TAG.sub(b" ", body)
    try:
        doc_id = m.group(1).decode("utf-8").strip()
        text = " ".join(body.decode("utf-8").split())
    except UnicodeDecodeError as e:
        st.skip(f"{p}:{lineno}: not UTF-8 ({e.reason})")
        return None
    if not doc_id:
        st.skip(f"{p}:{lineno}: empty <DOCNO>")
        return None
    if not text:
        st.skip(f"{p}:{lineno}: document {doc_id} has no text")
        return None
    return Document(doc_id, text)


_FOLDER_SUFFIXES = (".txt", ".md", ".txt.gz", ".md.gz")


def _read_folder(root: Path, st: ReadStats) -> Iterator[Document]:
    files = sorted(
        q for q in root.rglob("*") if q.is_file() and q.name.lower().endswith(_FOLDER_SUFFIXES)
    )
    for q in files:
        rel = q.relative_to(root).as_posix()
        try:
            with _open_binary(q) as f:
                data = f.read()
        except (OSError, EOFError) as e:
            st.skip(f"{q}: cannot read ({e})")
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            st.skip(f"{q}:{line}: not UTF-8 ({e.reason} at byte {e.start})")
            continue
        text = text.strip()
        if not text:
            st.skip(f"{q}: empty file")
            continue
        yield Document(rel, text)


_TOP = re.compile(r"<top>(.*?)</top>", re.S | re.I)
_NUM = re.compile(r"<num>\s*(?:Number:)?\s*([^<\s]+)", re.I)
_TITLE = re.compile(
    r"<title>\s*(?:Topic:)?\s*(.*?)\s*(?:</title>|<desc>|<narr>|</top>)", re.S | re.I
)


def read_queries(path: str | os.PathLike[str], stats: ReadStats | None = None) -> dict[str, str]:
    """Read queries: BEIR ``queries.jsonl`` (``_id``, ``text``) or TREC topics (``<top>``).

    TREC topics use the ``<title>`` text.

    Returns:
        query id -> query text (in file order).

    Raises:
        CorpusFormatError: unknown format or unreadable file.
    """
    st = stats if stats is not None else ReadStats()
    p = Path(path)
    if not p.is_file():
        raise CorpusFormatError(f"queries file {p} not found")
    out: dict[str, str] = {}
    if _base_suffix(p) in (".jsonl", ".json", ".ndjson"):
        for lineno, obj in _jsonl_objects(p, st):
            qid, text = obj.get("_id", obj.get("id")), obj.get("text")
            if qid is None or not isinstance(text, str) or not text.strip():
                st.skip(f"{p}:{lineno}: query without '_id' or 'text'")
                continue
            out[str(qid)] = text.strip()
        return out
    try:
        with _open_binary(p) as f:
            content = f.read().decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise CorpusFormatError(f"cannot read queries {p}: {e}") from None
    if content.lstrip().startswith("{"):
        for lineno, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                st.skip(f"{p}:{lineno}: malformed JSON ({e.msg})")
                continue
            text = obj.get("text") if isinstance(obj, dict) else None
            if isinstance(obj, dict) and "_id" in obj and isinstance(text, str):
                out[str(obj["_id"])] = text.strip()
            else:
                st.skip(f"{p}:{lineno}: query without '_id' or 'text'")
        return out
    tops = _TOP.findall(content)
    if not tops:
        raise CorpusFormatError(
            f"unknown queries format for {p}: expected BEIR queries.jsonl or TREC <top> topics"
        )
    for top in tops:
        num, title = _NUM.search(top), _TITLE.search(top)
        if num is None or title is None or not title.group(1).strip():
            st.skip(f"{p}: topic without <num> or <title>: {top[:60]!r}")
            continue
        out[num.group(1)] = " ".join(title.group(1).split())
    return out


def read_qrels(
    path: str | os.PathLike[str], stats: ReadStats | None = None
) -> dict[str, dict[str, int]]:
    """Read relevance judgements: BEIR TSV (with header) or TREC qrels (``qid iter docid rel``).

    Returns:
        query id -> {document id -> relevance grade}.

    Raises:
        CorpusFormatError: unreadable file or no valid line.
    """
    st = stats if stats is not None else ReadStats()
    p = Path(path)
    try:
        with _open_binary(p) as f:
            content = f.read().decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise CorpusFormatError(f"cannot read qrels {p}: {e}") from None
    out: dict[str, dict[str, int]] = {}
    for lineno, line in enumerate(content.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if lineno == 1 and parts[0].lower() in ("query-id", "query_id", "qid"):
            continue  # BEIR header
        if len(parts) == 3:
            qid, did, rel = parts
        elif len(parts) == 4:
            qid, _, did, rel = parts
        else:
            st.skip(f"{p}:{lineno}: expected 3 (BEIR) or 4 (TREC) columns")
            continue
        try:
            grade = int(float(rel))
        except ValueError:
            st.skip(f"{p}:{lineno}: relevance {rel!r} is not a number")
            continue
        out.setdefault(qid, {})[did] = grade
    if not out:
        raise CorpusFormatError(f"no relevance judgements in {p}")
    return out
