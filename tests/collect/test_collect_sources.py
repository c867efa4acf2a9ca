"""collect readers on real files: txt, md, html, jsonl, csv, parquet, WARC (written with warcio),
gzip, Hugging Face datasets from a local folder, and bad input reported per file."""

import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelworks.collect import CollectError, collect
from modelworks.collect.files import read_files
from modelworks.config import load_config
from modelworks.errors import ConfigError

ARTICLE = """<html><head><title>River notes</title></head><body>
<nav><a href="/">Home</a> | <a href="/about">About</a> | <a href="/login">Log in</a></nav>
<article><h1>The river valley</h1>
<p>The history of the river valley is long and varied. Farmers settled along the banks of the
river and built small villages that grew into towns over many centuries.</p>
<p>Trade with the coast brought new tools, and the people of the valley learned to work with
iron and bronze. Today the region is known for its orchards and its old stone bridges.</p>
</article><footer>Copyright 2024 Example Corp. All rights reserved.</footer></body></html>"""


def _write_corpus(d):
    (d / "a.txt").write_text("plain text document")
    (d / "b.md").write_text("# Title\n\nmarkdown body")
    (d / "page.html").write_text(ARTICLE)
    (d / "empty.html").write_text("<html><body><script>var x = 1;</script></body></html>")
    (d / "recs.jsonl").write_text(
        json.dumps(
            {"id": "r1", "text": "first record", "url": "https://ex.org/1", "licence": "CC-BY"}
        )
        + "\nnot json\n"
        + json.dumps({"body": "no text field"})
        + "\n"
    )
    (d / "rows.csv").write_text('id,text,lang\nc1,a csv row,en\nc2,"quoted, with comma",fr\n')
    (d / "nocol.csv").write_text("id,body\nx,text in the wrong column\n")
    pq.write_table(
        pa.table({"content": ["parquet one", "parquet two"], "score": [0.5, 0.9]}), d / "t.parquet"
    )
    (d / "bad.txt").write_bytes(b"caf\xe9 in latin-1")
    with gzip.open(d / "z.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "gzipped record"}) + "\n")
    full = gzip.compress(
        b"\n".join(json.dumps({"text": f"line {i}"}).encode() for i in range(2000))
    )
    (d / "cut.jsonl.gz").write_bytes(full[: len(full) // 2])


def test_files_read_every_format_and_report_bad_input(tmp_path):
    _write_corpus(tmp_path)
    problems = []
    docs = list(read_files([str(tmp_path)], "text", "collect.sources.0", problems))
    by_text = {d["text"]: d for d in docs}
    assert {"plain text document", "# Title\n\nmarkdown body", "first record", "a csv row",
            "quoted, with comma", "gzipped record"} <= set(by_text)  # fmt: skip
    page = next(d for d in docs if d["source"].endswith("page.html"))
    assert "orchards" in page["text"] and "All rights reserved" not in page["text"]
    assert "Log in" not in page["text"]
    rec = by_text["first record"]
    assert rec["id"] == "r1" and rec["url"] == "https://ex.org/1"
    assert json.loads(rec["metadata"])["licence"] == "CC-BY"
    assert json.loads(by_text["quoted, with comma"]["metadata"])["lang"] == "fr"
    cut = [d for d in docs if d["source"].endswith("cut.jsonl.gz")]
    assert 0 < len(cut) < 2000  # what came before the cut is kept
    text = "\n".join(problems)
    assert "recs.jsonl:2: not valid JSON" in text
    assert "recs.jsonl:3: no string field 'text'" in text
    assert "nocol.csv: no column 'text' (columns: id, body)" in text
    assert "bad.txt: undecodable bytes at offset 3" in text
    assert "empty.html: HTML without main text" in text
    assert "cut.jsonl.gz: truncated or corrupt gzip" in text
    # parquet: the text column is picked by name
    pq_docs = list(read_files([str(tmp_path / "t.parquet")], "content", "w", []))
    assert [d["text"] for d in pq_docs] == ["parquet one", "parquet two"]
    assert json.loads(pq_docs[1]["metadata"])["score"] == 0.9


def _warc(path, pages, truncate=False):
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True)
    for url, ctype, body in pages:
        headers = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
        rec = writer.create_warc_record(
            url, "response", payload=io.BytesIO(body), http_headers=headers
        )
        writer.write_record(rec)
    data = buf.getvalue()
    path.write_bytes(data[:-300] if truncate else data)  # members are ~660 bytes: cut mid-member


def test_warc_html_responses_are_extracted_with_their_urls(tmp_path):
    pages = [
        ("https://ex.org/river", "text/html; charset=utf-8", ARTICLE.encode()),
        ("https://ex.org/logo.png", "image/png", b"\x89PNG..."),
        ("https://ex.org/second", "text/html", ARTICLE.replace("river", "lake").encode()),
    ]
    _warc(tmp_path / "crawl.warc.gz", pages)
    problems = []
    docs = list(read_files([str(tmp_path / "*.warc.gz")], "text", "w", problems))
    assert [d["url"] for d in docs] == ["https://ex.org/river", "https://ex.org/second"]
    assert "orchards" in docs[0]["text"] and "lake" in docs[1]["text"]
    meta = json.loads(docs[0]["metadata"])
    assert meta["warc_record_id"].startswith("<urn:uuid:") and meta["warc_date"]
    assert problems == []
    # a truncated WARC keeps the records before the damage and says so
    many = [(f"https://ex.org/p{i}", "text/html", ARTICLE.encode()) for i in range(20)]
    _warc(tmp_path / "cut.warc.gz", many, truncate=True)
    problems = []
    docs = list(read_files([str(tmp_path / "cut.warc.gz")], "text", "w", problems))
    assert len(docs) == 19
    assert "truncated or corrupt WARC" in problems[0]


def test_collect_mixes_sources_and_reports_problems(tmp_path):
    (tmp_path / "in").mkdir()
    _write_corpus(tmp_path / "in")
    _warc(tmp_path / "in" / "c.warc.gz", [("https://ex.org/w", "text/html", ARTICLE.encode())])
    cfg = load_config(None, [
        f"runs_dir={tmp_path / 'runs'}", "name=mix",
        "collect.sources.0.type=files",
        f"collect.sources.0.paths=[{tmp_path}/in/*.jsonl, {tmp_path}/in/*.csv]",
        "collect.sources.1.type=warc", f"collect.sources.1.paths=[{tmp_path}/in/c.warc.gz]",
        "collect.sources.2.type=python_docs", "collect.sources.2.limit=3",
    ])  # fmt: skip
    manifest = collect(cfg)
    table = pq.read_table(cfg.run_dir / "collect" / "documents.parquet")
    assert table.column_names == ["id", "text", "source", "url", "metadata", "split"]
    rows = table.to_pylist()
    assert {r["url"] for r in rows} >= {"https://ex.org/1", "https://ex.org/w"}
    assert sum(r["source"] == "pydoc_data.topics" for r in rows) == 3
    problems = manifest["summary"]["problems"]["collect.sources.0"]
    assert problems["count"] == 3 and any("nocol.csv" in p for p in problems["first"])


def test_collect_with_only_bad_files_fails_with_the_first_problem(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    cfg = load_config(None, [
        f"runs_dir={tmp_path / 'runs'}", "collect.sources.0.type=files",
        f"collect.sources.0.paths=[{tmp_path}/x.csv]",
    ])  # fmt: skip
    with pytest.raises(CollectError, match="yielded nothing.*no column 'text'"):
        collect(cfg)


def test_hf_dataset_from_a_local_folder_streams(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    data = tmp_path / "ds" / "data"
    data.mkdir(parents=True)
    with open(data / "train-00000.jsonl", "w") as f:
        for i in range(25):
            f.write(
                json.dumps({"text": f"record {i}", "url": f"https://ex.org/{i}", "n": i}) + "\n"
            )
    from modelworks.collect.hf import read_hf

    docs = list(read_hf(str(tmp_path / "ds"), "train", "text", streaming=True))
    assert [d["text"] for d in docs] == [f"record {i}" for i in range(25)]
    assert docs[3]["url"] == "https://ex.org/3" and json.loads(docs[3]["metadata"]) == {"n": 3}
    assert docs[0]["source"] == f"hf:{tmp_path / 'ds'}"
    with pytest.raises(ValueError, match="no column 'body'"):
        list(read_hf(str(tmp_path / "ds"), "train", "body"))
    one = list(read_hf(str(data / "train-00000.jsonl"), "train", "text", streaming=False))
    assert len(one) == 25


def test_labelled_hf_dataset_feeds_text_classification(tmp_path, monkeypatch):
    """`type: table` with `dataset:` reads a Hugging Face dataset's text and label columns;
    ClassLabel integers come out as their names, and a missing label names the row (a bad row)."""
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    rows = {"sentence": [f"review {i}" for i in range(30)], "label": [i % 2 for i in range(30)]}
    (tmp_path / "ds" / "data").mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(
        str(tmp_path / "ds" / "data" / "train-00000.parquet")
    )
    cfg = load_config(None, [
        f"runs_dir={tmp_path / 'runs'}", "task=text_classification",
        "collect.sources.0.type=table", f"collect.sources.0.dataset={tmp_path / 'ds'}",
        "collect.sources.0.text_field=sentence",
    ])  # fmt: skip
    collect(cfg)
    table = pq.read_table(tmp_path / "runs" / cfg.name / "collect" / "documents.parquet")
    assert table.column("text").to_pylist()[:2] == ["review 0", "review 1"]
    assert table.column("label").to_pylist()[:4] == ["neg", "pos", "neg", "pos"]

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train.jsonl").write_text(
        '{"sentence": "fine", "label": "pos"}\n{"sentence": "no label"}\n'
    )
    bad = cfg.model_copy(deep=True)
    bad.collect.sources[0].dataset = str(tmp_path / "bad" / "train.jsonl")
    bad.name = "bad"
    # a row without its label is a bad row; 1 of 2 is past the default max_bad_rows (1%)
    with pytest.raises(
        CollectError, match=r"missing label \(1\): \S*train\.jsonl\[train\]:1 \(column 'label' is"
    ):
        collect(bad)


def test_json_lines_skips_blank_lines_and_names_the_bad_one():
    from modelworks.errors import ModelworksError
    from modelworks.jsonl import json_lines

    lines = ['{"a": 1}', "", "  ", "[2]", '{"b": oops}']
    parsed = json_lines(lines, "x.jsonl", ModelworksError)
    assert [next(parsed), next(parsed)] == [(1, {"a": 1}), (4, [2])]
    with pytest.raises(ModelworksError, match=r"^x\.jsonl:5: not valid JSON \(Expecting value\)$"):
        next(parsed)


# ------------------------------------------------------------- source types: one union on `type`


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["collect.sources.0.type=files", "collect.sources.0.urls=[http://a]"],
         "unknown key 'collect.sources.0.urls'"),
        (["collect.sources.0.type=crawl", "collect.sources.0.max_page=3"],
         "unknown key 'collect.sources.0.max_page'; did you mean 'collect.sources.0.max_pages'?"),
        (["collect.sources.0.type=ftp"],
         "collect.sources.0.type (got 'ftp'): not a source type; one of python_docs, files,"),
        (["collect.sources.0.type=crawl", "collect.sources.0.max_pages=0"],
         "collect.sources.0.max_pages (got 0): Input should be greater than or equal to 1"),
    ],
)  # fmt: skip
def test_a_source_takes_only_its_own_types_options(overrides, message):
    from modelworks.config import load_config

    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_every_source_type_declares_its_kind_and_reader():
    from modelworks.collect.source import KINDS, Source
    from modelworks.config.sources import SOURCE_TYPES, parse_source

    for name, cls in SOURCE_TYPES.items():
        src = parse_source({"type": name})
        assert type(src) is cls and src.type == name and cls.kind in KINDS
        assert cls.read is not Source.read, name
    assert type(parse_source({})).__name__ == "PythonDocsSource"  # no type: the default


def test_collect_help_lists_each_source_type_with_its_options():
    from tests.conftest import cli

    out = cli("collect", "--help").stdout
    crawl = out[out.index("  crawl ") : out.index("  hf ")]
    assert "max_pages" in crawl and "robots.txt" in crawl and "text_field" not in crawl
