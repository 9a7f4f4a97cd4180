"""The documentation site stays true: every Python sample of the guide runs, the API reference
covers every public name, the CLI reference covers every option the parser has, and the
benchmark figures are drawn from the result files.

Samples: every fenced ``python`` block of the pages under docs/ (not docs/generated/ nor the
API reference, which hold none) runs, page by page, in one namespace per page (a page reads as
one session) with a fresh temporary directory as the working directory. A block that cannot
run (it starts a server and blocks, say) is preceded by the line
``<!-- docs-test: skip REASON -->``; the test counts those and prints each reason. The default
model is loaded once for the whole module (the real ``Encoder.load``, memoised), so the pages
cost seconds, not one model load per ``Collection.create``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s+(.+?)\s*-->")
FENCE = re.compile(r"^(\s*)```(\w*)[^\n]*$")


def sample_pages() -> list[Path]:
    """The pages whose Python blocks must run: every page but the generated and API ones."""
    pages = sorted(DOCS.rglob("*.md"))
    return [p for p in pages if not {"generated", "reference"} & set(p.relative_to(DOCS).parts)]


def blocks(page: Path) -> list[tuple[int, str, str | None]]:
    """``(first line number, code, skip reason or None)`` of each ```python block of ``page``."""
    out: list[tuple[int, str, str | None]] = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        indent, lang = m.group(1), m.group(2)
        start = i + 1
        j = start
        while j < len(lines) and not re.match(rf"^{indent}```\s*$", lines[j]):
            j += 1
        assert j < len(lines), f"{page}:{i + 1}: unterminated code fence"
        if lang == "python":
            prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            skip = SKIP.search(prev)
            code = "\n".join(x[len(indent) :] for x in lines[start:j])
            out.append((start + 1, code, skip.group(1) if skip else None))
        i = j + 1
    return out


@pytest.fixture(scope="module")
def shared_encoder() -> Iterator[None]:
    """``Encoder.load`` memoised for this module: the real loader, called once per model spec."""
    from latix.encoder import Encoder

    real = Encoder.load.__func__
    cache: dict[str, Any] = {}

    def load(cls: type[Encoder], spec: Any, *args: Any, **kwargs: Any) -> Encoder:
        key = repr((str(spec), args, sorted(kwargs.items())))
        if key not in cache:
            cache[key] = real(cls, spec, *args, **kwargs)
        return cache[key]

    mp = pytest.MonkeyPatch()
    mp.setattr(Encoder, "load", classmethod(load))
    yield
    mp.undo()


COUNTS: dict[str, list[str]] = {"run": [], "skipped": [], "pages": []}


@pytest.mark.parametrize("page", sample_pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_guide_samples_run(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_encoder: None
) -> None:
    monkeypatch.chdir(tmp_path)
    COUNTS["pages"].append(str(page))
    namespace: dict[str, Any] = {"__name__": f"docs_sample_{page.stem}"}
    found = blocks(page)
    for line, code, skip in found:
        where = f"{page.relative_to(ROOT)}:{line}"
        if skip is not None:
            COUNTS["skipped"].append(f"{where}: {skip}")
            continue
        try:  # padded so that a traceback names the page's own line numbers
            exec(compile("\n" * (line - 1) + code, str(page.relative_to(ROOT)), "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"the sample at {where} failed: {type(e).__name__}: {e}") from e
        COUNTS["run"].append(where)
    for v in list(namespace.values()):  # close what the page left open (its tmp dir goes)
        close = getattr(v, "close", None)
        if type(v).__name__ in ("Collection", "Index") and callable(close):
            close()


def test_sample_counts() -> None:
    """Runs after the pages (file order): every page with samples ran them, and what was not
    run is marked with a reason."""
    n_blocks = sum(len(blocks(p)) for p in sample_pages())
    marked = [b for p in sample_pages() for b in blocks(p) if b[2] is not None]
    print(
        f"\ndocs samples: {n_blocks} Python blocks in {len(sample_pages())} pages, "
        f"{n_blocks - len(marked)} run, {len(marked)} marked not to run"
    )
    for p in sample_pages():
        for line, _, reason in blocks(p):
            if reason is not None:
                print(f"  not run: {p.relative_to(ROOT)}:{line}: {reason}")
    assert n_blocks - len(marked) >= 20
    if set(COUNTS["pages"]) == {str(p) for p in sample_pages()}:  # every page ran before
        assert len(COUNTS["run"]) == n_blocks - len(marked)
        assert len(COUNTS["skipped"]) == len(marked)


def test_skip_marker_needs_a_python_block(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text(
        "text\n\n<!-- docs-test: skip starts a server -->\n```python\nserve()\n```\n\n"
        "```python\nx = 1\n```\n\n```sh\nls\n```\n"
    )
    assert blocks(page) == [(5, "serve()", "starts a server"), (9, "x = 1", None)]
    for p in sample_pages():
        text = p.read_text()
        for m in SKIP.finditer(text):
            after = text[m.end() :].lstrip("\n")
            assert after.startswith("```python"), f"{p}: a skip marker not before a python block"


# ---------------------------------------------------------------------------- API reference


def documented_names() -> set[str]:
    """Dotted names the reference pages render: each ``::: X`` directive, and for a module
    directive its ``members:`` list, or its ``__all__`` when it has none."""
    names: set[str] = set()
    for page in (DOCS / "reference").glob("*.md"):
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"^::: ([\w.]+)\s*$", line)
            if m is None:
                continue
            target = m.group(1)
            names.add(target)
            members: list[str] = []
            j = i + 1
            while j < len(lines) and lines[j].startswith("    "):
                mm = re.match(r"^\s+- (\w+)\s*$", lines[j])
                if mm:
                    members.append(mm.group(1))
                j += 1
            try:
                mod = importlib.import_module(target)
            except ImportError:
                continue
            for n in members or getattr(mod, "__all__", []):
                names.add(f"{target}.{n}")
    return names


def public_names() -> list[str]:
    """Every public name: ``latix.__all__``, the serve module's, the retrievers', the sharded
    collections'."""
    import latix

    out = [f"latix.{n}" for n in latix.__all__ if n != "__version__"]
    for mod in (
        "latix.serve",
        "latix.integrations.langchain",
        "latix.integrations.llama_index",
        "latix.distributed",
        "latix.distributed.serve",
    ):
        out += [f"{mod}.{n}" for n in importlib.import_module(mod).__all__]
    return out


def test_reference_documents_every_public_name() -> None:
    import latix

    have = documented_names()
    missing = []
    for full in public_names():
        mod, _, name = full.rpartition(".")
        obj = getattr(importlib.import_module(mod), name)
        home = getattr(obj, "__module__", None)
        if full not in have and f"{home}.{name}" not in have:
            missing.append(full)
    assert not missing, f"public names without a reference entry: {missing}"
    print(f"\nAPI reference: {len(public_names())} public names documented, {len(have)} in all")
    assert "latix.Collection" in have and len(latix.__all__) > 20


# ---------------------------------------------------------------------------- CLI reference


def _gen_cli() -> Any:
    sys.path.insert(0, str(ROOT / "scripts" / "docs"))
    try:
        return importlib.import_module("gen_cli")
    finally:
        sys.path.pop(0)


def test_cli_reference_covers_every_option() -> None:
    """Every subcommand and every option that ``latix X --help`` prints (parsed from the help
    text, not from the generator's walk) is in the generated page, in that command's section."""
    from latix import cli

    page = _gen_cli().render()
    sections = dict(
        (m.group(1), m.group(2))
        for m in re.finditer(r"^## `(latix[^`]*)`\n(.*?)(?=^## |\Z)", page, re.M | re.S)
    )
    todo = [("latix", cli._parser())]
    n = 0
    while todo:
        name, p = todo.pop()
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                todo += [(f"{name} {k}", sp) for k, sp in a.choices.items()]
        if name == "latix":
            continue
        assert name in sections, f"no section for {name}"
        opts = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", p.format_help())) - {"-h", "--help"}
        for o in opts:
            assert f"`{o}`" in sections[name], f"{name}: {o} missing from the CLI reference"
            n += 1
    assert n > 40
    assert "`--compression` | `auto` \\| `none` | `auto`" in sections["latix index"]


# ---------------------------------------------------------------------------- figures


def _plots() -> Any:
    pytest.importorskip("matplotlib", reason="the docs extra (`make docs` installs it)")
    sys.path.insert(0, str(ROOT / "benches"))
    try:
        return importlib.import_module("plots")
    finally:
        sys.path.pop(0)


def test_figures_drawn_from_result_files(tmp_path: Path) -> None:
    plots = _plots()
    res = tmp_path / "results"
    res.mkdir()
    for name in ("collection.json", "serve.json"):
        shutil.copy(ROOT / "bench-results" / name, res / name)
    # compressed.json as benches/bench_compressed.py writes it (values made up for this test:
    # the test checks they reach the table, not what they are).
    row = {
        "bytes_per_token": 30.7,
        "ndcg_at_10": 0.7081,
        "r_at_100": 0.92,
        "recall_at_10_vs_exact": 0.8581,
        "p50_1t_ms": 1.55,
        "p99_1t_ms": 3.0,
        "p50_2t_ms": 1.2,
        "p99_2t_ms": 2.3,
    }
    exact = {**row, "method": "exact", "bytes_per_token": 768.0, "recall_at_10_vs_exact": 1.0}
    comp = {
        "scifact": {
            "provenance": ["- commit: abc"],
            "n_tokens": 1231885,
            "n_centroids": 2048,
            "rows": [exact, {**row, "method": "codes only"}],
        }
    }
    (res / "compressed.json").write_text(json.dumps(comp))
    # peers.json as benches/bench_peers.py writes it (made-up values, as above).
    point = {
        "p50_ms": 1.5,
        "p99_ms": 4.0,
        "recall_at_10_vs_exact": 0.85,
        "ndcg_at_10": 0.705,
        "bytes_per_token": 29.7,
        "build_s": 30.0,
    }
    peer_rows = [
        {**point, "method": "latix codes", "library": "latix", "setting": "nprobe 8"},
        {**point, "method": "latix codes", "library": "latix", "setting": "nprobe 16"},
        {
            **point,
            "method": "peer X",
            "library": "peer",
            "setting": "ndocs 256",
            "p50_ms": 12.25,
            "bytes_per_token": 104.5,
            "latix_over_peer_p50": 0.125,
        },
    ]
    peers = {
        "provenance": ["- commit: abc"],
        "n_tokens": 1231885,
        "n_queries": 300,
        "passes": 3,
        "load_average": {"start": "1 / 2 / 3", "end": "1 / 2 / 3"},
        "rows": peer_rows,
        "not_measured": {"peer Y": "not measured: needs torch"},
    }
    (res / "peers.json").write_text(json.dumps(peers))
    out = tmp_path / "fig"
    text, pngs = plots.figures(res, out, "rel")
    assert set(pngs) == {
        "compressed-latency-recall.png",
        "compressed-bytes-per-token.png",
        "collection-quality.png",
        "collection-filtered.png",
        "collection-switch.png",
        "serve.png",
    }
    for p in pngs:
        assert (out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(rel/{p})" in text
    assert "| scifact | codes only | 30.7 | 0.7081 | 0.858 | 1.55 / 3.00 |" in text
    assert "| peer X | ndocs 256 | 12.25 / 4.00 | 0.850 | 0.7050 | 104.5 | 30.0 | 0.125 |" in text
    assert "- **peer Y**: not measured: needs torch" in text
    coll = json.loads((res / "collection.json").read_text())
    base = coll["filtered"]["table"]["unfiltered"]["warm"]
    assert f"| unfiltered | {base['p50']:.2f} | {base['p99']:.2f} | 1.00 |" in text
    srv = json.loads((res / "serve.json").read_text())
    h = srv["http"][0]
    assert f"| {h['clients']} | {h['p50_ms']:.2f} | {h['p99_ms']:.2f} | {h['qps']:.1f} |" in text

    # Without result files nothing is drawn, and each missing file is named with its command.
    empty = tmp_path / "none"
    empty.mkdir()
    text, pngs = plots.figures(empty, tmp_path / "fig2", "rel")
    assert pngs == []
    for name in ("compressed.json", "collection.json", "serve.json", "peers.json", "scale.json"):
        assert f"No `bench-results/{name}` yet" in text


def test_scale_figures_drawn_from_scale_json(tmp_path: Path) -> None:
    """scale.json as benches/bench_scale.py writes it (values made up: the test checks they
    reach the figure's legend and the table): the exponent in the legend is the least-squares
    slope of log p50 against log tokens."""
    plots = _plots()
    res = tmp_path / "results"
    res.mkdir()
    keys = ("build_s", "peak_rss_mb", "pools_rss_mb", "bytes_per_token", "ndcg_at_10")
    keys += ("recall_at_10_vs_exact", "generated_share_exact_top10")
    sizes = {}
    for n, p50, build in ((2e6, 2.0, 10.0), (8e6, 4.0, 40.0), (32e6, 8.0, 160.0)):
        row: dict[str, Any] = dict.fromkeys(keys, 1.0)
        row.update(n_tokens=int(n), p50_1t_ms=p50, p99_1t_ms=2 * p50, build_s=build)
        row.update(p50_2t_ms=p50 / 1.5, p99_2t_ms=p50, provenance=["- commit: abc"])
        row.update(generated_share_exact_top10=0.125, bytes_per_token=27.25, add_piece_docs=500)
        sizes[f"{n / 1e6:g}M"] = row
    (res / "scale.json").write_text(json.dumps({"sizes": sizes}))
    assert abs(plots._exponent([2e6, 8e6, 32e6], [2.0, 4.0, 8.0]) - 0.5) < 1e-9
    assert abs(plots._exponent([2e6, 8e6, 32e6], [10.0, 40.0, 160.0]) - 1.0) < 1e-9
    text, pngs = plots.figures(res, tmp_path / "fig", "rel")
    assert "scale.png" in pngs and "(rel/scale.png)" in text
    assert "| 32,000,000 | 160.0 | 1 (1) | 27.2 | 8.00 / 16.00 |" in text
    assert "12.5%" in text and "1 * (1)" not in text
    sizes["2M"]["add_piece_docs"] = None  # built from one batch per commit: marked
    (res / "scale.json").write_text(json.dumps({"sizes": sizes}))
    text, _ = plots.figures(res, tmp_path / "fig2", "rel")
    assert "| 2,000,000 | 10.0 | 1 * (1) |" in text
    # One size only: no curve.
    (res / "scale.json").write_text(json.dumps({"sizes": {"2M": sizes["2M"]}}))
    text, pngs = plots.figures(res, tmp_path / "fig3", "rel")
    assert "scale.png" not in pngs and "fewer than two sizes" in text
