"""The demo: index the docstrings of Python's standard library and answer sample queries.

Every machine with Python has this corpus, so the demo needs no download: module, class and
function docstrings are collected with :mod:`inspect` (a deterministic selection of ``--limit``
documents, module docstrings first), encoded with the default model, indexed, and searched; each
hit is printed with the words that won each query token's maximum highlighted.

Run ``python -m latix.demo`` (or ``make demo``). The collection is kept in
``$LATIX_CACHE_DIR/demo`` (default ``~/.cache/latix/demo``); a second run resumes it.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import io
import os
import pkgutil
import sys
import time
import warnings
from collections.abc import Sequence
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from latix.corpus import Document

__all__ = ["stdlib_docstrings", "main", "SAMPLE_QUERIES"]

SAMPLE_QUERIES = [
    "parse command line arguments",
    "compress a file with gzip",
    "compare two sequences and show the differences",
]

# Modules whose import has side effects (opens a browser, prints, starts a GUI) or is slow/heavy.
_SKIP = {
    "antigravity",
    "this",
    "idlelib",
    "turtledemo",
    "tkinter",
    "turtle",
    "test",
    "__main__",
    "ensurepip",
    "venv",
    "lib2to3",
    "pydoc_data",
    "xxsubtype",
    "msilib",
    "winreg",
    "winsound",
    "msvcrt",
    "nt",
    "_winapi",
    "curses",
    "readline",
    "pty",
    "tty",
    "site",
    "sitecustomize",
    "usercustomize",
    "xxlimited",
    "lzma" if sys.platform == "win32" else "",
}


def _clean(doc: str | None, max_chars: int = 600) -> str:
    """Whitespace-normalised docstring, cut at a word boundary after ``max_chars`` characters
    (the summary and first paragraphs: keeps the demo's encoding time to about a minute)."""
    text = " ".join(doc.split()) if doc else ""
    if len(text) > max_chars:
        cut = text.rfind(" ", 0, max_chars)
        text = text[: cut if cut > 0 else max_chars]
    return text


def stdlib_docstrings(
    limit: int | None = 2000, min_chars: int = 40, modules: Sequence[str] | None = None
) -> list[Document]:
    """Docstrings of the standard library's public modules, classes and functions.

    Args:
        limit: maximum documents; module docstrings are kept first, the rest is a deterministic
            selection (by hash of the id) so that every part of the library is represented.
        min_chars: docstrings shorter than this are skipped.
        modules: restrict to these top-level modules (default: the whole standard library).

    Returns:
        Documents with ids like ``json.dumps`` and text ``"json.dumps: <docstring>"``.
    """
    pool: Sequence[str] = (
        modules if modules else getattr(sys, "stdlib_module_names", sys.builtin_module_names)
    )
    names = sorted(str(n) for n in pool if not n.startswith("_") and n not in _SKIP)
    mod_docs: list[Document] = []
    members: list[Document] = []
    seen: set[str] = set()
    i = 0
    while i < len(names):
        name = names[i]
        i += 1
        if name in seen:
            continue
        seen.add(name)
        try:
            with (
                warnings.catch_warnings(),
                redirect_stdout(io.StringIO()),
                redirect_stderr(io.StringIO()),
            ):
                warnings.simplefilter("ignore")
                mod = importlib.import_module(name)
        except Exception:  # missing optional C extensions, platform-specific modules
            continue
        doc = _clean(inspect.getdoc(mod))
        if len(doc) >= min_chars:
            mod_docs.append(Document(name, f"{name}: {doc}"))
        if hasattr(mod, "__path__") and name.count(".") < 2:  # public submodules of packages
            for sub in pkgutil.iter_modules(mod.__path__):
                leaf = sub.name
                if not leaf.startswith("_") and leaf not in _SKIP and "test" not in leaf:
                    names.append(f"{name}.{leaf}")
        try:
            items = sorted(vars(mod).items())
        except TypeError:
            continue
        for attr, obj in items:
            if attr.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
                continue
            if getattr(obj, "__module__", None) != name:
                continue  # re-exported from elsewhere: index it where it is defined
            doc = _clean(inspect.getdoc(obj))
            if len(doc) >= min_chars:
                members.append(Document(f"{name}.{attr}", f"{name}.{attr}: {doc}"))
            if not inspect.isclass(obj):
                continue
            for mname, meth in sorted(vars(obj).items()):  # methods defined by the class itself
                if mname.startswith("_") or not inspect.isroutine(meth):
                    continue
                mdoc = _clean(
                    meth.__doc__
                    if isinstance(meth, (staticmethod, classmethod))
                    else inspect.getdoc(meth)
                )
                if len(mdoc) >= min_chars:
                    qual = f"{name}.{attr}.{mname}"
                    members.append(Document(qual, f"{qual}: {mdoc}"))
    docs = mod_docs + sorted(members, key=lambda d: hashlib.sha1(d.id.encode()).hexdigest())
    return docs if limit is None else docs[:limit]


def main(argv: Sequence[str] | None = None) -> int:
    """Build (or resume) the stdlib-docstring collection and print answers to sample queries."""
    from latix.collection import Collection, index_corpus, remove_collection
    from latix.display import print_hits
    from latix.encoder import Encoder
    from latix.errors import LatixError

    ap = argparse.ArgumentParser(prog="python -m latix.demo", description=__doc__)
    cache = Path(os.environ.get("LATIX_CACHE_DIR") or Path.home() / ".cache" / "latix")
    ap.add_argument("--out", default=str(cache / "demo"), help="collection directory")
    ap.add_argument("--limit", type=int, default=2000, help="documents to index")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads")
    ap.add_argument("--restart", action="store_true", help="rebuild the collection from scratch")
    ap.add_argument("-k", type=int, default=3, help="hits per query")
    ap.add_argument("--modules", nargs="+", default=None, help="only these stdlib modules")
    ap.add_argument("queries", nargs="*", help="queries (default: a few samples)")
    args = ap.parse_args(argv)

    try:
        t0 = time.perf_counter()
        docs = stdlib_docstrings(args.limit, modules=args.modules)
        print(
            f"collected {len(docs)} standard-library docstrings in {time.perf_counter() - t0:.1f} s"
        )
        encoder = Encoder.default(n_threads=args.threads)
        print(f"model: {encoder.config.name}, {encoder.dim}-d token vectors")
        out = Path(args.out)
        if args.restart or (Collection.exists(out) and not _opens(out)):
            remove_collection(out)  # also an older latix's demo collection
        if Collection.exists(out):
            col = Collection.open(out, encoder=encoder)
        else:
            col = Collection.create(out, encoder=encoder)
        with col:
            rep = index_corpus(col, docs, commit_every=500)
            rate = rep.n_indexed / rep.seconds if rep.seconds > 0 else 0.0
            print(
                f"indexed {rep.n_indexed} documents ({rep.n_tokens} token vectors) in "
                f"{rep.seconds:.1f} s ({rate:.1f} docs/s); {rep.n_already} already indexed; "
                f"collection: {args.out}"
            )
            color = sys.stdout.isatty()
            for q in args.queries or SAMPLE_QUERIES:
                print(f"\nquery: {q}")
                t1 = time.perf_counter()
                print_hits(col, q, args.k, color=color, width=240)
                print(f"({(time.perf_counter() - t1) * 1e3:.0f} ms including explanation)")
    except LatixError as e:
        print(f"latix demo: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; run again to resume", file=sys.stderr)
        return 130
    return 0


def _opens(path: Path) -> bool:
    """Whether ``path`` is a complete collection this latix can open."""
    from latix.collection import Collection
    from latix.errors import LatixError

    try:
        Collection.open(path).close()
    except LatixError:
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
