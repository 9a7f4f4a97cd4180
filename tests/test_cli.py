"""CLI and collection tests: index (resumable, interruptible, bad input), search (explained), eval.

Runs against the real latix.Index (Rust store).
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import latix
import numpy as np
import pytest
from conftest import data_dir
from latix import cli
from latix.collection import Collection, index_corpus, remove_collection
from latix.corpus import Document, read_corpus

DOCS = [
    ("d1", "Metformin", "Metformin lowers blood glucose in patients with type 2 diabetes."),
    ("d2", "Volcanoes", "Lava flows from erupting volcanoes can destroy villages."),
    ("d3", "Photosynthesis", "Plants convert sunlight into chemical energy by photosynthesis."),
    ("d4", "Football", "The striker scored two goals in the final minutes of the match."),
    ("d5", "Vaccines", "Vaccination trains the immune system to recognise viruses."),
    ("d6", "Rust", "Rust guarantees memory safety without a garbage collector."),
    ("d7", "Coffee", "Caffeine in coffee blocks adenosine receptors and reduces tiredness."),
    ("d8", "Glaciers", "Glaciers are retreating quickly as global temperatures rise."),
    ("d9", "Insulin", "Insulin resistance is an early sign of type 2 diabetes."),
    ("d10", "Bees", "Honey bees pollinate crops and communicate by dancing."),
]


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    p = tmp_path / "corpus.jsonl"
    p.write_text("".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, t, x in DOCS))
    return p


def test_index_search_eval_end_to_end(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str], encoder: object
) -> None:
    out = tmp_path / "coll"
    assert cli.main(["index", str(corpus), "--out", str(out), "--no-progress"]) == 0
    assert "indexed 10 documents" in capsys.readouterr().out
    with Collection.open(out) as c:
        assert len(c) == 10 and len(c.index) == 10
        assert c.index.stats()["kind"] == "compressed"  # `latix index` compresses by default
    assert (
        cli.main(["search", str(out), "diabetes blood sugar drug", "-k", "3", "--color", "never"])
        == 0
    )
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].split()[1] == "d1"  # Metformin
    assert "why:" in lines[1] and "[diabetes]" in lines[2]
    # eval: one query per topic, judged on its own document
    q = tmp_path / "q.jsonl"
    q.write_text(
        json.dumps({"_id": "q1", "text": "drug for diabetes"})
        + "\n"
        + json.dumps({"_id": "q2", "text": "erupting volcano"})
        + "\n"
        + json.dumps({"_id": "q3", "text": "unjudged"})
        + "\n"
    )
    r = tmp_path / "qrels.tsv"
    r.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td9\t1\nq2\td2\t1\nq9\td3\t1\n")
    assert cli.main(["eval", str(out), "--queries", str(q), "--qrels", str(r), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_queries"] == 2 and res["n_queries_without_text"] == 1
    assert res["metrics"]["Recall@100"] == 1.0
    assert res["latency_ms"]["encode"]["p50"] > 0


def test_resume_and_interrupt(tmp_path: Path, corpus: Path, encoder: latix.encoder.Encoder) -> None:
    docs = list(read_corpus(corpus))
    out = tmp_path / "coll"
    calls = 0

    def flaky(batch: list[Document]) -> list[np.ndarray]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt  # like Ctrl-C while the second commit's batch is encoded
        return encoder.encode_documents([d.text for d in batch])

    col = Collection.create(out, encoder=encoder)
    with pytest.raises(KeyboardInterrupt):
        index_corpus(col, docs, commit_every=4, vectors_fn=flaky)
    col.close()
    with Collection.open(out) as c:
        assert len(c) == 4 and len(c.index) == 4  # the 4 committed docs; the rest is gone
        c.verify()
    with Collection.open(out, encoder=encoder) as c:
        rep = index_corpus(c, docs, commit_every=4)
        assert (rep.n_already, rep.n_indexed) == (4, 6)
        assert len(c) == 10 and len(c.index) == 10
        c.verify()
    remove_collection(out)
    assert not out.exists()
    with Collection.create(out, encoder=encoder) as c:
        rep = index_corpus(c, docs)
        assert (rep.n_already, rep.n_indexed) == (0, 10)


def test_cli_limit_then_resume(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str], encoder: object
) -> None:
    out = str(tmp_path / "c")
    assert cli.main(["index", str(corpus), "--out", out, "--limit", "3", "--no-progress"]) == 0
    assert cli.main(["index", str(corpus), "--out", out, "--no-progress"]) == 0
    assert "skipped 3 documents already" in capsys.readouterr().out


def test_refuses_foreign_directory_and_other_model(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "notes"
    d.mkdir()
    (d / "keep.txt").write_text("precious")
    assert cli.main(["index", str(corpus), "--out", str(d), "--no-progress"]) == 1
    assert "not an empty directory" in capsys.readouterr().err
    assert cli.main(["index", str(corpus), "--out", str(d), "--restart", "--no-progress"]) == 1
    assert (d / "keep.txt").read_text() == "precious"


def test_bad_records_are_counted_and_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], encoder: object
) -> None:
    p = tmp_path / "c.jsonl.gz"
    lines = [
        json.dumps({"_id": "a", "title": "", "text": "good document one"}).encode(),
        b'{"_id": "b", "text": "broken',
        json.dumps({"_id": "c", "text": ""}).encode(),
        b'{"_id": "d", "text": "caf\xe9 latin-1"}',
        json.dumps({"_id": "a", "text": "duplicate id"}).encode(),
        json.dumps({"text": "no id"}).encode(),
        json.dumps({"_id": "e", "text": "good document two"}).encode(),
    ]
    with gzip.open(p, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    out = tmp_path / "coll"
    assert cli.main(["index", str(p), "--out", str(out), "--no-progress"]) == 0
    o = capsys.readouterr()
    assert "indexed 2 documents" in o.out and "1 documents with duplicate ids" in o.out
    assert "skipped 4 unreadable or empty records" in o.err
    assert f"{p}:2: malformed JSON" in o.err and f"{p}:4: not UTF-8" in o.err


def test_unknown_format_and_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "data.bin"
    p.write_bytes(b"\x00\x01binary")
    assert cli.main(["index", str(p), "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    assert "unknown corpus format" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert cli.main(["search", str(tmp_path / "nope"), "x"]) == 1
    assert "not a latix collection" in capsys.readouterr().err


def test_trec_and_folder_readers(tmp_path: Path) -> None:
    trec = tmp_path / "docs.trec"
    trec.write_text(
        "<DOC>\n<DOCNO>1</DOCNO>\ncompact memories have\nflexible capacities\n</DOC>\n"
        "<DOC>\n<DOCNO> 2 </DOCNO>\n<TITLE>T</TITLE><TEXT>\n"
        "an electronic computer\n</TEXT>\n</DOC>\n"
        "<DOC>\n<DOCNO>3</DOCNO>\n</DOC>\n<DOC>\nno docno\n</DOC>\n"
    )
    docs = list(read_corpus(trec))
    assert docs == [
        Document("1", "compact memories have flexible capacities"),
        Document("2", "T an electronic computer"),
    ]
    folder = tmp_path / "f"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha text")
    (folder / "sub" / "b.md").write_text("# beta\nbody")
    (folder / "bad.txt").write_bytes(b"ok line\n\xff\xfe bad")
    (folder / "skip.bin").write_text("ignored")
    with gzip.open(folder / "c.txt.gz", "wt") as f:
        f.write("gamma")
    from latix.corpus import ReadStats

    st = ReadStats()
    got = list(read_corpus(folder, st))
    assert [d.id for d in got] == ["a.txt", "c.txt.gz", "sub/b.md"]
    assert st.n_skipped == 1 and "bad.txt:2: not UTF-8" in st.messages[0]


def test_vaswani_real_files() -> None:
    root = data_dir() / "vaswani"
    if not root.exists():
        pytest.skip(f"Vaswani data not at {root} (set LATIX_DATA to the shared data folder)")
    from latix.corpus import read_qrels, read_queries

    it = read_corpus(root / "doc-text.trec")
    first = next(it)
    assert first.id == "1" and first.text.startswith("compact memories have flexible capacities")
    q = read_queries(root / "query-text.trec")
    assert len(q) == 93 and q["1"].startswith("MEASUREMENT OF DIELECTRIC CONSTANT")
    qrels = read_qrels(root / "qrels")
    assert len(qrels) == 93 and qrels["1"]["1239"] == 1


def test_explain_hit_sums_to_maxsim(encoder: latix.encoder.Encoder) -> None:
    text = "Insulin resistance is an early sign of type 2 diabetes."
    q = encoder.encode_queries(["diabetes insulin"])[0]
    enc, spans = encoder.encode_with_spans([text], "document")
    m = cli.explain_hit(q, enc[0], spans[0])
    total = sum(s for _, _, s in m.values())
    ref = latix.maxsim(q, enc[0], np.array([0, len(enc[0])], np.int64))[0]
    assert math.isclose(total, float(ref), rel_tol=1e-5)
    words = {text[a:b] for a, b, _ in m.values()}
    assert {"diabetes", "insulin"} <= {w.lower() for w in words}


def test_highlight_window_and_marks() -> None:
    text = "x" * 500 + " target word " + "y" * 500
    a = text.index("target")
    s = cli.highlight(text, [(a, a + 6, 1.0)], width=100)
    assert s.startswith("…") and s.endswith("…") and "[target]" in s
    assert len(s) < 120
    assert cli.highlight("ab cd", [(3, 5, 1.0)], color=True) == "ab \x1b[1;33mcd\x1b[0m"


def test_eval_metrics_match_hand_computation() -> None:
    from latix.eval import evaluate

    class Fixed:
        def search(self, q: np.ndarray, k: int, n_threads: int | None = None):
            ids = np.array([["a", "b", "c", ""]], dtype=object)
            return np.array([[3.0, 2.0, 1.0, -np.inf]], np.float32), ids

    qrels = {"q": {"b": 1, "c": 2, "z": 1}}
    res = evaluate(
        Fixed(), None, {"q": "t"}, qrels, depth=4, query_vectors={"q": np.zeros((1, 2), np.float32)}
    )
    # trec_eval (and so BEIR) uses linear gains: rel / log2(rank + 1)
    dcg = 1 / math.log2(3) + 2 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert math.isclose(res.metrics["nDCG@10"], dcg / idcg, rel_tol=1e-6)
    assert math.isclose(res.metrics["MRR@10"], 0.5)
    assert math.isclose(res.metrics["Recall@100"], 2 / 3)
    assert math.isclose(res.metrics["MAP"], (1 / 2 + 2 / 3) / 3)


def test_demo_small(tmp_path: Path, capsys: pytest.CaptureFixture[str], encoder: object) -> None:
    from latix import demo

    mods = ["gzip", "difflib", "json"]
    docs = demo.stdlib_docstrings(limit=12, modules=mods)
    assert len(docs) == 12 and len({d.id for d in docs}) == 12
    assert {"gzip", "difflib", "json"} <= {d.id for d in docs}  # module docstrings come first
    assert all(d.text.startswith(d.id + ": ") for d in docs)
    out = tmp_path / "demo"
    args = ["--out", str(out), "--limit", "12", "--modules", *mods, "-k", "2"]
    assert demo.main([*args, "--", "gzip compression"]) == 0
    text = capsys.readouterr().out
    assert "indexed 12 documents" in text and "query: gzip compression" in text
    assert "  1. gzip" in text and "why:" in text
    assert demo.main([*args, "--", "x"]) == 0
    assert "12 already indexed" in capsys.readouterr().out


def test_fidelity_option_reaches_compression(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str], encoder: object
) -> None:
    """`latix index --fidelity T` creates a compressed collection whose index has tier T; on an
    uncompressed collection, or with an unknown tier, it is a clear error and nothing is
    created."""
    assert cli._fidelity_option(None) == {}
    assert cli._fidelity_option("balanced") == {"fidelity": "balanced"}
    out = tmp_path / "c"
    args = ["index", str(corpus), "--out", str(out), "--no-progress"]
    assert cli.main([*args, "--fidelity", "high"]) == 0
    with Collection.open(out) as c:
        comp = c.index.compression
        assert comp is not None and comp.fidelity == "high"
    capsys.readouterr()
    out2 = tmp_path / "n"
    args = ["index", str(corpus), "--out", str(out2), "--no-progress", "--compression", "none"]
    assert cli.main([*args, "--fidelity", "high"]) == 1
    assert "applies to compressed collections" in capsys.readouterr().err
    assert not out2.exists()
    out3 = tmp_path / "x"
    with pytest.raises(SystemExit):
        cli.main(["index", str(corpus), "--out", str(out3), "--fidelity", "best"])
    assert "invalid choice" in capsys.readouterr().err
    assert not out3.exists()


def test_index_merges_its_commits_into_one_segment_unless_told_not_to(
    tmp_path: Path, corpus: Path, encoder: latix.encoder.Encoder
) -> None:
    """A bulk build ends with one segment (searches over one are faster); ``--no-compact``
    leaves the commits' segments; both answer a query with the same hits."""
    hits = {}
    for flag, want_one in (([], True), (["--no-compact"], False)):
        out = tmp_path / f"coll{len(flag)}"
        args = ["index", str(corpus), "--out", str(out), "--no-progress", "--commit-every", "2"]
        assert cli.main(args + flag) == 0
        with Collection.open(out) as c:
            assert len(c) == 10
            n_segments = c.stats()["index"]["n_segments"]
            assert (n_segments == 1) if want_one else (n_segments > 1), n_segments
            hits[want_one] = [(h.id, round(h.score, 4)) for h in c.search("diabetes drug", 5)]
    assert hits[True] == hits[False]


def test_index_leaves_segments_alone_when_the_run_added_little_and_refuses_growth_flags_on_none(
    tmp_path: Path,
    corpus: Path,
    encoder: latix.encoder.Encoder,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A rerun that indexes nothing new (resume of a finished build) does not rewrite the
    collection; the codec's growth settings on a plain collection are refused like --fidelity."""
    out = tmp_path / "coll"
    args = ["index", str(corpus), "--out", str(out), "--no-progress", "--commit-every", "2"]
    assert cli.main(args + ["--no-compact"]) == 0
    with Collection.open(out) as c:
        before = c.stats()["index"]["n_segments"]
    assert before > 1
    assert cli.main(args) == 0  # everything already indexed: nothing added, nothing merged
    with Collection.open(out) as c:
        assert c.stats()["index"]["n_segments"] == before and len(c) == 10
    for flag in (["--expected-tokens", "1000000"], ["--retrain-growth", "4"]):
        none_args = ["index", str(corpus), "--out", str(tmp_path / "plain"), "--no-progress"]
        assert cli.main(none_args + ["--compression", "none"] + flag) != 0
        assert f"{flag[0]} applies to compressed collections" in capsys.readouterr().err
