"""Figures of the benchmarks page, drawn from the result files the benchmarks write.

`python benches/plots.py --out DIR` reads bench-results/*.json (never the Markdown tables) and
writes matplotlib PNGs plus `figures.md`, the Markdown fragment the docs' benchmarks page
includes (`make docs` runs it, so the figures always show the committed results):

* compressed.json (`benches/bench_compressed.py`): latency against recall@10 vs exact MaxSim for
  every method of each corpus (exact search, codes only, candidate generation alone, kept
  vectors with the exact re-rank) and bytes per token on disk;
* collection.json (`benches/bench_collection.py`): nDCG@10 per mode, the index's bytes per
  token, filtered search at each selectivity (latency ratio and recall) and the
  exhaustive-vs-probing switch point;
* serve.json (`benches/bench_serve.py`): `latix serve` p50 / p99 and QPS at 1 / 4 / 16 clients
  next to in-process search;
* peers.json (`benches/bench_peers.py`): latix's tiers and peer libraries' compressed indexes,
  latency against recall swept in one run: a panel of its own in the latency-vs-recall figure
  (the other panels' points come from other runs), the peers' bytes per token in the bytes
  figure, and the table with the latix / peer p50 at equal recall.
* scale.json (`benches/bench_scale.py`): the scale curves, p50 latency (1 and 2 threads) and
  build time against tokens on log-log axes with the fitted growth exponent in the legend, and
  bytes per token against tokens.

A result file that does not exist yet is named in the fragment with the command that writes it;
nothing is drawn for it (no figure is ever made from numbers typed in here).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench-results"
COMMANDS = {
    "compressed.json": "make bench-compressed (benches/bench_compressed.py)",
    "collection.json": "make bench-collection (benches/bench_collection.py)",
    "serve.json": "make bench-serve (benches/bench_serve.py)",
    "peers.json": "python benches/bench_peers.py",
    "scale.json": "python benches/bench_scale.py",
}


def _load(results: Path, name: str) -> dict[str, Any] | None:
    p = results / name
    return json.loads(p.read_text()) if p.is_file() else None


def _save(fig: Any, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def _missing(name: str) -> list[str]:
    return [
        f'!!! note "No `bench-results/{name}` yet"',
        f"    Its figures appear here once `{COMMANDS[name]}` has written it.",
        "",
    ]


def _image(rel: str, name: str, alt: str) -> str:
    return f"![{alt}]({rel}/{name})"


# ---------------------------------------------------------------------------- compressed index


def _peer_panel(ax: Any, p: dict[str, Any]) -> None:
    """One curve per method of peers.json (p50 against recall, points in sweep order)."""
    series: dict[str, list[dict[str, Any]]] = {}
    for r in p["rows"]:
        series.setdefault(r["method"], []).append(r)
    for name, rs in series.items():
        rs = sorted(rs, key=lambda r: r["p50_ms"])
        ls = "-" if rs[0]["library"] == "latix" else "--"
        ax.plot(
            [r["p50_ms"] for r in rs],
            [r["recall_at_10_vs_exact"] for r in rs],
            marker="o" if ls == "-" else "s",
            ls=ls,
            label=f"{name}, {rs[0]['bytes_per_token']:.0f} B/token",
        )
    ax.legend(fontsize=7, loc="lower right")
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency, 1 thread, k = 10 (ms, log scale)")
    ax.set_ylabel("recall@10 against exact MaxSim")
    ax.set_title(f"scifact, latix against peers (one run): {p['n_tokens']:,} tokens", fontsize=9)
    ax.grid(alpha=0.3)


def compressed(
    d: dict[str, Any], out: Path, rel: str, peers: dict[str, Any] | None = None
) -> list[str]:
    """Latency vs recall and bytes/token per method, one panel per corpus, and one for latix
    against the peers (peers.json) when it has rows."""
    corpora = [c for c in ("scifact", "distractors") if c in d]
    md = ["### Compressed index against exact search", ""]
    if not corpora:
        return md + ["`compressed.json` holds no corpus.", ""]
    with_peers = peers is not None and bool(peers.get("rows"))
    n = len(corpora) + int(with_peers)
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 4.2), squeeze=False)
    if with_peers:
        assert peers is not None
        _peer_panel(axes[0][-1], peers)
    for ax, c in zip(axes[0], corpora, strict=False):
        run = d[c]
        for r in run["rows"]:
            ax.scatter(
                r["p50_1t_ms"],
                r["recall_at_10_vs_exact"],
                s=40,
                label=f"{r['method']}, {r['bytes_per_token']:.0f} B/token",
            )
        ax.legend(fontsize=7, loc="lower right")
        ax.set_xscale("log")
        ax.set_xlabel("p50 latency, 1 thread, k = 10 (ms, log scale)")
        ax.set_ylabel("recall@10 against exact MaxSim")
        ax.set_title(f"{c}: {run['n_tokens']:,} tokens")
        ax.grid(alpha=0.3)
    latency = _save(fig, out, "compressed-latency-recall.png")
    labels, values = [], []
    for c in corpora:
        for r in d[c]["rows"]:
            labels.append(f"{c}: {r['method']}")
            values.append(r["bytes_per_token"])
    if with_peers:
        assert peers is not None
        for name, bpt in dict((r["method"], r["bytes_per_token"]) for r in peers["rows"]).items():
            if not name.startswith("latix"):
                labels.append(f"scifact (peers.json): {name}")
                values.append(bpt)
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(labels) + 1.2))
    bars = ax.barh(labels, values)
    ax.bar_label(bars, fmt="%.1f", padding=3, fontsize=8)
    ax.set_xlim(0, max(values) * 1.12)
    ax.set_xlabel("bytes per token on disk (compressed: every file; exact: the f16 vectors)")
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=8)
    size = _save(fig, out, "compressed-bytes-per-token.png")
    md += [_image(rel, latency, "latency against recall"), "", _image(rel, size, "bytes/token"), ""]
    md += ["| corpus | method | bytes/token | nDCG@10 | recall@10 vs exact | p50 / p99 1T ms |"]
    md += ["| --- | --- | --- | --- | --- | --- |"]
    for c in corpora:
        for r in d[c]["rows"]:
            md.append(
                f"| {c} | {r['method']} | {r['bytes_per_token']:.1f} | {r['ndcg_at_10']:.4f} | "
                f"{r['recall_at_10_vs_exact']:.3f} | {r['p50_1t_ms']:.2f} / {r['p99_1t_ms']:.2f} |"
            )
    md.append("")
    for c in corpora:
        prov = "; ".join(x.removeprefix("- ") for x in d[c].get("provenance", []))
        md.append(f"*{c}:* {prov}")
        md.append("")
    return md


# ---------------------------------------------------------------------------- peers


def peers_table(p: dict[str, Any]) -> list[str]:
    """The table of peers.json: every operating point, the equal-recall ratio per peer point,
    and the peers that could not be measured, with the reason."""
    md = ["### Against peer libraries", ""]
    la = p.get("load_average", {})
    md += [
        f"SciFact, {p['n_tokens']:,} tokens, {p['n_queries']} test queries, k = 10, 1 thread, "
        f"{p['passes']} timed passes (load average at the start of timing {la.get('start')}); "
        "latix / peer p50 at equal recall@10 reads latix's p50 off its lower envelope at the "
        "peer's recall (geometric interpolation; `benches/bench_peers.py`).",
        "",
        "| method | setting | p50 / p99 ms | recall@10 vs exact | nDCG@10 | bytes/token | build s "
        "| latix / peer p50 at equal recall |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in p.get("rows", []):
        ratio = r.get("latix_over_peer_p50")
        peer = r["library"] != "latix"
        ratio_s = "-" if not peer else ("out of latix's range" if ratio is None else f"{ratio:.3f}")
        bs = "-" if r.get("build_s") is None else f"{r['build_s']:.1f}"
        md.append(
            f"| {r['method']} | {r['setting']} | {r['p50_ms']:.2f} / {r['p99_ms']:.2f} | "
            f"{r['recall_at_10_vs_exact']:.3f} | {r['ndcg_at_10']:.4f} | "
            f"{r['bytes_per_token']:.1f} | {bs} | {ratio_s} |"
        )
    notes = p.get("not_measured") or {}
    if notes:
        md += ["", "Not measured:", ""]
        md += [f"- **{k}**: {v}" for k, v in notes.items()]
    prov = "; ".join(x.removeprefix("- ") for x in p.get("provenance", []))
    md += ["", f"*Source:* `bench-results/peers.json`; {prov}", ""]
    return md


# ---------------------------------------------------------------------------- collections


def collection_quality(d: dict[str, Any], out: Path, rel: str, when: str) -> list[str]:
    q = d.get("quality") or {}
    if not q:
        return []
    modes = [
        "late/exact (plain)",
        "late/compressed",
        "keyword/FTS5 BM25",
        "hybrid/compressed + BM25",
    ]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(modes)
    names = list(q)
    for j, m in enumerate(modes):
        xs = [i + (j - (len(modes) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, [q[n][m]["nDCG@10"] for n in names], width, label=m)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("nDCG@10, test queries")
    ax.set_ylim(0.3, 0.8)
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    img = _save(fig, out, "collection-quality.png")
    md = ["### Collections: late, keyword and hybrid search", "", _image(rel, img, "nDCG@10"), ""]
    md += [
        "| collection | documents | passages | index bytes/token | codec | nDCG@10 late "
        "(compressed) | keyword | hybrid |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n in names:
        r = q[n]
        ix = r["index"]
        md.append(
            f"| {n} | {r['docs']:,} | {r['passages']:,} | {r['index_bytes_per_token']:.1f} | "
            f"K = {ix['n_centroids']}, {ix['code_bytes_per_token']} B of codes per pooled vector "
            f"| {r['late/compressed']['nDCG@10']:.4f} | {r['keyword/FTS5 BM25']['nDCG@10']:.4f} "
            f"| {r['hybrid/compressed + BM25']['nDCG@10']:.4f} |"
        )
    md += ["", f"*Source:* `bench-results/collection.json`, quality part run {when}.", ""]
    return md


def collection_filtered(d: dict[str, Any], out: Path, rel: str, when: str) -> list[str]:
    f = d.get("filtered") or {}
    table = f.get("table") or {}
    if "unfiltered" not in table:
        return []
    base = table["unfiltered"]["warm"]
    rows = [(k, v["warm"]) for k, v in table.items() if k != "unfiltered"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    labels = [k.split(" (")[0] for k, _ in rows]
    a1.bar(labels, [v["p50"] / base["p50"] for _, v in rows])
    a1.axhline(1.0, color="k", lw=0.8, ls="--", label="unfiltered p50")
    a1.set_ylabel("p50 / unfiltered p50")
    a1.set_xlabel("share of documents the filter allows")
    a1.legend(fontsize=8)
    a2.plot(labels, [v["recall@10"] for _, v in rows], marker="o", label="filtered")
    a2.axhline(base["recall@10"], color="k", lw=0.8, ls="--", label="unfiltered")
    a2.set_ylabel("recall@10 vs exact over the filtered set")
    a2.set_xlabel("share of documents the filter allows")
    a2.set_ylim(0, 1.05)
    a2.legend(fontsize=8)
    for a in (a1, a2):
        a.grid(alpha=0.3)
    img = _save(fig, out, "collection-filtered.png")
    idx = f.get("index", {})
    md = [
        "### Filtered search at every selectivity",
        "",
        f"SciFact + 100k distractors: {f.get('n_docs', 0):,} documents, "
        f"{f.get('n_tokens', 0):,} tokens, compressed (K = {idx.get('n_centroids')}, "
        f"{idx.get('bytes_per_token', 0):.1f} B/token); 1 thread, k = 10, query vectors given.",
        "",
        _image(rel, img, "filtered search"),
        "",
        "| filter | p50 ms | p99 ms | p50 / unfiltered | recall@10 |",
        "| --- | --- | --- | --- | --- |",
        f"| unfiltered | {base['p50']:.2f} | {base['p99']:.2f} | 1.00 | {base['recall@10']:.3f} |",
    ]
    for k, v in rows:
        md.append(
            f"| {k} | {v['p50']:.2f} | {v['p99']:.2f} | {v['p50'] / base['p50']:.2f} | "
            f"{v['recall@10']:.3f} |"
        )
    sw = f.get("switch") or []
    if sw:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
        sizes = [s["size"] for s in sw]
        for key, name in (("exhaustive", "exhaustive"), ("probe", "probing")):
            a1.plot(sizes, [s[key]["p50"] for s in sw], marker="o", label=name)
            a2.plot(sizes, [s[key]["recall@10"] for s in sw], marker="o", label=name)
        for a in (a1, a2):
            a.set_xscale("log")
            a.set_xlabel("documents the filter allows (log scale)")
            a.axvline(2000, color="k", lw=0.8, ls=":", label="EXHAUSTIVE_BELOW")
            a.grid(alpha=0.3)
            a.legend(fontsize=8)
        a1.set_ylabel("p50 ms")
        a2.set_ylabel("recall@10 vs exact")
        img2 = _save(fig, out, "collection-switch.png")
        md += [
            "",
            "Where a filtered search switches from probing to scoring every allowed "
            "document (`latix.collection.EXHAUSTIVE_BELOW`):",
            "",
            _image(rel, img2, "switch"),
        ]
    md += ["", f"*Source:* `bench-results/collection.json`, filtered part run {when}.", ""]
    return md


# ---------------------------------------------------------------------------- serving


def serve(d: dict[str, Any], out: Path, rel: str) -> list[str]:
    http = d.get("http") or []
    inproc = [r for r in d.get("inprocess") or [] if "precision" not in r]
    if not http:
        return []
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    series: dict[str, list[dict[str, Any]]] = {}
    for r in http:
        series.setdefault(f"HTTP: {r['server']}", []).append(r)
    if inproc:
        series["in-process Collection.search"] = inproc
    for name, rs in series.items():
        if len(rs) < 2:
            continue  # a single-level variant (e.g. batching off at 16 clients) is in the table
        cl = [r["clients"] for r in rs]
        (line,) = a1.plot(cl, [r["p50_ms"] for r in rs], marker="o", label=f"{name} p50")
        a1.plot(cl, [r["p99_ms"] for r in rs], marker="x", ls="--", color=line.get_color())
        a2.plot(cl, [r["qps"] for r in rs], marker="o", label=name)
    for a in (a1, a2):
        a.set_xscale("log", base=2)
        a.set_xticks([1, 4, 16], ["1", "4", "16"])
        a.set_xlabel("concurrent clients")
        a.grid(alpha=0.3)
    a1.set_ylabel("latency ms (solid p50, dashed p99)")
    a2.set_ylabel("queries per second")
    a2.legend(fontsize=7)
    img = _save(fig, out, "serve.png")
    md = ["### `latix serve` under concurrency", "", _image(rel, img, "serve latency"), ""]
    md += ["| path | clients | p50 ms | p99 ms | QPS |", "| --- | --- | --- | --- | --- |"]
    for r in d.get("inprocess") or []:
        md.append(
            f"| in-process, {r.get('precision', 'int8 (auto)')} queries | {r['clients']} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['qps']:.1f} |"
        )
    for r in http:
        md.append(
            f"| HTTP, {r['server']} | {r['clients']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['qps']:.1f} |"
        )
    enc = d.get("encoder_10_words") or {}
    if enc:
        md += [
            "",
            "Query encoder in the same run (10-word query, 1 thread): "
            + "; ".join(
                f"{k} p50 {v['p50_ms']:.2f} ms, p99 {v['p99_ms']:.2f} ms" for k, v in enc.items()
            )
            + ".",
        ]
    md += ["", "*Source:* `bench-results/serve.json` (provenance in `bench-results/serve.md`).", ""]
    return md


# ---------------------------------------------------------------------------- scale


def _exponent(xs: list[float], ys: list[float]) -> float:
    """Slope of the least-squares line of log y against log x (the growth exponent)."""
    import numpy as np

    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def scale(d: dict[str, Any], out: Path, rel: str) -> list[str]:
    """Latency and build time against tokens (log-log, fitted exponents), bytes per token."""
    import numpy as np

    sizes = d.get("sizes") or {}
    named = sorted(sizes.items(), key=lambda kv: kv[1]["n_tokens"])
    rows = [r for _, r in named]
    md = ["### Scale: cost against corpus size", ""]
    if len(rows) < 2:
        return md + ["`scale.json` holds fewer than two sizes: no curve to draw.", ""]
    # Exponents are fitted over the sizes bench_scale.py measured with the newest size's code
    # (its "fit" record), as its own table does: sizes of other code are drawn, not fitted.
    same = set((d.get("fit") or {}).get("same_code") or sizes)
    fitted = [r for name, r in named if name in same]
    n = [r["n_tokens"] for r in rows]
    nf = [r["n_tokens"] for r in fitted]

    def label(name: str, key: str) -> str:
        if len(fitted) < 2:
            return f"{name}: no exponent (fewer than two sizes of the same code)"
        return f"{name}: exponent {_exponent(nf, [r[key] for r in fitted]):.2f}"

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for key, name in (("p50_1t_ms", "p50, 1 thread"), ("p50_2t_ms", "p50, 2 threads")):
        axes[0].plot(n, [r[key] for r in rows], marker="o", label=label(name, key))
    axes[0].set_ylabel("search latency, k = 10 (ms)")
    ys = [r["build_s"] for r in rows]
    axes[1].plot(n, ys, marker="o", label=label("build (latix's time)", "build_s"))
    if len(fitted) >= 2:
        yf = [r["build_s"] for r in fitted]
        fit = np.exp(np.polyval(np.polyfit(np.log(nf), np.log(yf), 1), np.log(nf)))
        axes[1].plot(nf, fit, ls="--", color="grey", lw=0.8, label="least-squares fit")
    axes[1].set_ylabel("build time (s)")
    for ax in axes[:2]:
        ax.set_xscale("log")
        ax.set_yscale("log")
    axes[2].plot(n, [r["bytes_per_token"] for r in rows], marker="o", label="every index file")
    axes[2].set_xscale("log")
    axes[2].set_ylim(0, max(r["bytes_per_token"] for r in rows) * 1.2)
    axes[2].set_ylabel("bytes per token on disk")
    for ax in axes:
        ax.set_xlabel("corpus tokens (log scale)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    img = _save(fig, out, "scale.png")
    md += [_image(rel, img, "scale curves"), ""]
    md += [
        "| tokens | build s | peak RSS MB (generator pools) | bytes/token | p50 / p99 1T ms "
        "| p50 / p99 2T ms | nDCG@10 | recall@10 vs exact | generated share of exact top 10 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        md.append(
            f"| {r['n_tokens']:,} | {r['build_s']:.1f} | {r['peak_rss_mb']:,.0f}"
            f"{'' if r.get('add_piece_docs') else ' *'} ({r['pools_rss_mb']:,.0f}) | "
            f"{r['bytes_per_token']:.1f} | {r['p50_1t_ms']:.2f} / "
            f"{r['p99_1t_ms']:.2f} | {r['p50_2t_ms']:.2f} / {r['p99_2t_ms']:.2f} | "
            f"{r['ndcg_at_10']:.4f} | {r['recall_at_10_vs_exact']:.3f} | "
            f"{r['generated_share_exact_top10']:.1%} |"
        )
    md.append("")
    others = [r["size"] for r in rows if r not in fitted]
    if others:
        md += [
            f"Exponents fitted over {', '.join(r['size'] for r in fitted)} (the newest size's "
            f"code); {', '.join(others)} were measured with other code and are drawn only.",
            "",
        ]
    if any(not r.get("add_piece_docs") for r in rows):
        md += [
            "\\* the build added each commit's generated documents as one float32 batch, which "
            "counts in this peak (about 1.8 GB more than latix's own); see "
            "`bench-results/scale.md`.",
            "",
        ]
    for r in rows:
        prov = "; ".join(x.removeprefix("- ") for x in r.get("provenance", []))
        md += [f"*{r['n_tokens']:,} tokens:* {prov}", ""]
    return md


def figures(results: Path, out: Path, rel: str) -> tuple[str, list[str]]:
    """Draws every figure into ``out``; returns the Markdown fragment and the PNG names."""
    out.mkdir(parents=True, exist_ok=True)
    md: list[str] = []
    comp = _load(results, "compressed.json")
    peers = _load(results, "peers.json")
    md += compressed(comp, out, rel, peers) if comp is not None else _missing("compressed.json")
    md += peers_table(peers) if peers is not None else _missing("peers.json")
    coll = _load(results, "collection.json")
    if coll is None:
        md += _missing("collection.json")
    else:
        sec = coll.get("sections", {})
        md += collection_quality(coll, out, rel, sec.get("quality", {}).get("when", "?"))
        md += collection_filtered(coll, out, rel, sec.get("filtered", {}).get("when", "?"))
    srv = _load(results, "serve.json")
    md += serve(srv, out, rel) if srv is not None else _missing("serve.json")
    sc = _load(results, "scale.json")
    md += scale(sc, out, rel) if sc is not None else _missing("scale.json")
    return "\n".join(md) + "\n", sorted(p.name for p in out.glob("*.png"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder of the *.json results")
    ap.add_argument("--out", type=Path, required=True, help="folder for the PNGs and figures.md")
    ap.add_argument(
        "--rel",
        default="generated/benchmarks",
        help="path of --out as the including page links it (default: %(default)s)",
    )
    a = ap.parse_args()
    text, pngs = figures(a.results, a.out, a.rel)
    (a.out / "figures.md").write_text(text)
    print(f"{len(pngs)} figures in {a.out}: {', '.join(pngs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
