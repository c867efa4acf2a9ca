"""The one reader of delimited text (TSV without quoting, CSV per RFC 4180, `quoting` overrides)
and the one bad-row policy of the table readers (collect/rows.py), on real files."""

from __future__ import annotations

import json

import pytest

from modelworks.collect import CollectError, collect
from modelworks.collect.interactions import read_interactions
from modelworks.collect.parallel import read_parallel
from modelworks.collect.rows import BadRows
from modelworks.collect.tables import read_tables
from modelworks.config import ConfigError, load_config

# GLUE-like sentences: quotes that open a field and never close in CSV terms, quotes around a
# tab (which in TSV still separates fields), and apostrophes everywhere
SENTENCES = [
    ('"quoted start without an end', "1"),
    ('she said "no" and left', "0"),
    ("it's the director's \"best\" film, isn't it?", "1"),
    ("''tis a ' stray apostrophe", "0"),
    ("plain sentence", "1"),
]
TAB_IN_QUOTES = 'a "tab\tinside" quotes\t0'  # three fields in TSV: a bad row in either form


def _table_cfg(tmp_path, name: str, path, *extra: str):
    return load_config(
        None,
        [
            f"runs_dir={tmp_path / 'runs'}",
            f"name={name}",
            "task=text_classification",
            "collect.sources.0.type=table",
            f"collect.sources.0.paths=['{path}']",
            *extra,
        ],
    )


def test_header_and_headerless_tsv_with_quotes_give_identical_records(tmp_path):
    body = [f"{t}\t{y}" for t, y in SENTENCES[:2]] + [TAB_IN_QUOTES]
    body += [f"{t}\t{y}" for t, y in SENTENCES[2:]]
    (tmp_path / "h.tsv").write_text("sentence\tlabel\n" + "\n".join(body) + "\n")
    (tmp_path / "n.tsv").write_text("\n".join(body) + "\n")
    bad_h, bad_n = BadRows("h", max_bad_rows=1), BadRows("n", max_bad_rows=1)
    with_header = list(
        read_tables([str(tmp_path / "h.tsv")], "sentence", "label", [], "h", "auto", bad_h)
    )
    headerless = list(
        read_tables(
            [str(tmp_path / "n.tsv")], "sentence", "label", ["sentence", "label"], "n", "auto",
            bad_n,
        )
    )  # fmt: skip
    pairs = [(r["text"], r["label"]) for r in with_header]
    assert pairs == [(r["text"], r["label"]) for r in headerless]
    assert pairs == SENTENCES  # every quote and apostrophe kept as text, nothing swallowed
    assert [r["id"].rsplit(":", 1)[1] for r in with_header] == ["2", "3", "5", "6", "7"]
    # the tab inside quotes splits the row into three fields in both files: one bad row each
    assert bad_h.counts == bad_n.counts == {"more fields than the header": 1}
    assert bad_h.first["more fields than the header"][0].endswith(
        "h.tsv:4 (3 fields, the header has 2)"
    )
    assert bad_n.first["more fields than the header"][0].endswith(
        "n.tsv:3 (3 fields, n.columns names 2)"
    )


def test_csv_reads_quoted_commas_newlines_and_quotes_per_rfc4180(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes(
        b'text,label\r\n"a, b, and c",1\r\n"two\nlines, one field",0\r\n'
        b'"say ""hi"", then go",1\r\nplain,0\r\n'
    )
    rows = list(read_tables([str(path)], "text", "label", [], "src"))
    assert [(r["text"], r["label"]) for r in rows] == [
        ("a, b, and c", "1"),
        ("two\nlines, one field", "0"),
        ('say "hi", then go', "1"),
        ("plain", "0"),
    ]
    assert [r["id"].rsplit(":", 1)[1] for r in rows] == ["2", "3", "5", "6"]  # where rows start


def test_unclosed_quote_in_csv_reports_the_line_it_opens_on(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text('text,label\nfine,1\n"never closed, 0\nnext row,1\nlast,0\n')
    with pytest.raises(ValueError, match=r"u\.csv:3: a quote opens a field on this line") as e:
        list(read_tables([str(path)], "text", "label", [], "collect.sources.0"))
    assert "\n" not in str(e.value) and "collect.sources.0.quoting: none" in str(e.value)
    # a stray quote that a later line's quote "closes": one bad row at the line it opened on
    path.write_text('text,label\nfine,1\n"opens here,0\nswallowed,1\nalso "x",1\nok,0\n')
    bad = BadRows("s", max_bad_rows=5)
    rows = list(read_tables([str(path)], "text", "label", [], "s", "auto", bad))
    assert [r["text"] for r in rows] == ["fine", "ok"]
    assert bad.first == {
        "unclosed quote": [f"{path}:3 (a quoted field opens on line 3 and breaks on line 5)"]
    }


def test_quoting_overrides_the_suffix(tmp_path):
    (tmp_path / "a.csv").write_text('text,label\n"quoted start,1\n')
    rows = list(read_tables([str(tmp_path / "a.csv")], "text", "label", [], "s", "none"))
    assert rows[0]["text"] == '"quoted start'
    (tmp_path / "b.tsv").write_text('text\tlabel\n"tab\tinside"\t1\n')
    rows = list(read_tables([str(tmp_path / "b.tsv")], "text", "label", [], "s", "csv"))
    assert rows[0]["text"] == "tab\tinside"
    pairs = tmp_path / "p.tsv"
    pairs.write_text('en\tzh\n"Hi," she said.\t"你好，"她说。\n')
    got = list(read_parallel([str(pairs)], "en", "zh", [], "s"))
    assert (got[0]["text"], got[0]["target"]) == ('"Hi," she said.', '"你好，"她说。')


def test_unknown_quoting_value_is_one_line_naming_the_source_and_values(tmp_path):
    with pytest.raises(ConfigError) as e:
        _table_cfg(tmp_path, "q", tmp_path / "x.tsv", "collect.sources.0.quoting=tsv")
    msg = str(e.value)
    assert "\n" not in msg and "collect.sources.0.quoting" in msg and "'tsv'" in msg
    assert "'auto', 'none' or 'csv'" in msg


def test_tsv_rows_with_more_fields_than_the_header_stop_in_one_line(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("text\tlabel\ngood\t1\ntext with\ta tab\t0\nalso good\t0\n")
    with pytest.raises(CollectError) as e:
        collect(_table_cfg(tmp_path, "tabs", path))
    msg = str(e.value)
    assert "\n" not in msg
    assert "1 of 3 rows are bad" in msg and "max_bad_rows=0.01" in msg
    assert (
        "more fields than the header (1): " in msg and "x.tsv:3 (3 fields, the header has 2)" in msg
    )


def test_bad_rows_under_the_limit_are_skipped_counted_and_listed(tmp_path):
    path = tmp_path / "big.csv"
    lines = ["text,label"] + [f"review {i},{i % 2}" for i in range(300)]
    lines[10], lines[20] = "no label here,", "also none,  "
    path.write_text("\n".join(lines) + "\n")
    manifest = collect(_table_cfg(tmp_path, "under", path))  # 2 of 300 < 1%
    assert manifest["summary"]["documents"] == 298
    bad = manifest["summary"]["bad_rows"]["collect.sources.0"]
    assert bad["rows"] == 300 and bad["bad"] == 2 and bad["max_bad_rows"] == 0.01
    assert bad["reasons"]["missing label"]["first"] == [
        f"{path}:11 (column 'label' is empty)",
        f"{path}:21 (column 'label' is empty)",
    ]
    stored = json.loads((tmp_path / "runs" / "under" / "collect" / "manifest.json").read_text())
    assert stored["summary"]["bad_rows"] == manifest["summary"]["bad_rows"]
    # a count instead of a fraction: 2 allowed, 3 are not
    lines[30] = "third,"
    path.write_text("\n".join(lines) + "\n")
    collect(_table_cfg(tmp_path, "count2", path, "collect.sources.0.max_bad_rows=3"))
    with pytest.raises(CollectError, match="3 of 300 rows are bad"):
        collect(_table_cfg(tmp_path, "count3", path, "collect.sources.0.max_bad_rows=2"))


def test_too_many_bad_rows_list_every_reason_at_once(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text(
        "user,item,timestamp\nu1,a,1\n,b,2\nu2,,3\nu3,c,not-a-time\nu4,d,\nu5,e,6\nu6,f,also-bad\n"
    )
    with pytest.raises(ValueError) as e:
        list(read_interactions([str(log)], "user", "item", "timestamp", "", "collect.sources.0"))
    msg = str(e.value)
    assert "\n" not in msg and "5 of 7 rows are bad" in msg
    assert "time neither a number nor a date (2): " in msg
    assert f"{log}:5 ('not-a-time' in column 'timestamp'), {log}:8 (" in msg
    for part in (
        f"empty user (1): {log}:3",
        f"empty item (1): {log}:4",
        f"empty time (1): {log}:6",
    ):
        assert part in msg


def test_missing_column_is_reported_as_such_with_the_columns_the_file_has(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("text,label\ngreat,1\nawful,0\n")
    cfg = _table_cfg(tmp_path, "col", path, "collect.sources.0.label_field=sentiment")
    with pytest.raises(CollectError) as e:
        collect(cfg)
    assert str(e.value) == (
        f"{path}: no column 'sentiment' (collect.sources.0.label_field); the file has: text, label"
    )
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text('{"text": "great", "label": 1}\n{"text": "awful", "label": 0}\n')
    with pytest.raises(ValueError) as e:
        list(read_tables([str(jsonl)], "text", "sentiment", [], "s"))
    assert "no column 'sentiment' (s.label_field); the file has: label, text" in str(e.value)


def test_time_column_mixing_epoch_numbers_and_iso_dates_says_it_mixes_them(tmp_path):
    log = tmp_path / "mixed.csv"
    log.write_text("user,item,timestamp\nu1,a,1700000000\nu1,b,2024-01-05T10:00:00Z\nu1,c,3\n")
    with pytest.raises(ValueError) as e:
        list(read_interactions([str(log)], "user", "item", "timestamp", "", "s"))
    msg = str(e.value)
    assert "mixes epoch numbers (line 2: '1700000000') and dates (line 3: " in msg
    assert "neither" not in msg
    # ISO dates alone, with and without zones, read as seconds since the epoch (UTC)
    log.write_text("user,item,timestamp\nu1,a,2024-01-05\nu1,b,2024-01-05T00:00:01+00:00\n")
    rows = list(read_interactions([str(log)], "user", "item", "timestamp", "", "s"))
    assert [r["timestamp"] for r in rows] == [1704412800.0, 1704412801.0]


def test_headerless_tsv_interactions_with_columns(tmp_path):
    data = tmp_path / "u.data"
    data.write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    target = tmp_path / "u.tsv"
    target.write_bytes(data.read_bytes())
    rows = list(
        read_interactions(
            [str(target)], "user", "item", "timestamp", "rating", "s",
            ["user", "item", "rating", "timestamp"],
        )
    )  # fmt: skip
    assert [(r["user"], r["item"], r["rating"], r["timestamp"]) for r in rows] == [
        ("196", "242", 3.0, 881250949.0),
        ("186", "302", 3.0, 891717742.0),
    ]


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    for name in ("bom.csv", "bom.tsv"):
        sep = "," if name.endswith(".csv") else "\t"
        (tmp_path / name).write_bytes(f"\ufefftext{sep}label\nhello{sep}1\n".encode())
        rows = list(read_tables([str(tmp_path / name)], "text", "label", [], "s"))
        assert [(r["text"], r["label"]) for r in rows] == [("hello", "1")]
