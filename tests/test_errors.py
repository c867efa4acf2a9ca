"""Bad input ends with one clear line on stderr, a non-zero exit, and nothing half-written."""

import pytest

from tests.conftest import cli, tiny_overrides


def _one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.strip().splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_missing_data_source(tmp_path):
    proc = cli(
        "collect",
        *tiny_overrides(tmp_path),
        "collect.sources.0.type=files",
        f"collect.sources.0.paths=['{tmp_path}/nothing/*.txt']",
        check=False,
    )
    assert "collect.sources.0.paths: no file matches" in _one_line_error(proc)
    assert not (tmp_path / "tiny" / "collect").exists()
    assert not (tmp_path / "tiny" / "collect.partial").exists()


def test_empty_source_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    proc = cli(
        "collect",
        *tiny_overrides(tmp_path),
        "collect.sources.0.type=files",
        f"collect.sources.0.paths=['{tmp_path}/empty.jsonl']",
        check=False,
    )
    assert "yielded nothing" in _one_line_error(proc)


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    runs = tmp_path_factory.mktemp("errors")
    cli("collect", *tiny_overrides(runs))
    return runs


def test_corpus_empty_after_filtering(collected):
    proc = cli(
        "preprocess", *tiny_overrides(collected), "preprocess.min_chars=10000000", check=False
    )
    assert "no documents left after filtering" in _one_line_error(proc)
    assert not (collected / "tiny" / "preprocess").exists()


def test_vocabulary_larger_than_corpus(collected):
    proc = cli(
        "preprocess", *tiny_overrides(collected), "preprocess.vocab_size=200000", check=False
    )
    assert "larger than the corpus supports" in _one_line_error(proc)


def test_stage_before_its_input_exists(tmp_path):
    proc = cli("pretrain", *tiny_overrides(tmp_path), check=False)
    assert "run `modelworks preprocess`" in _one_line_error(proc)


def test_config_that_does_not_parse(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {n_layer: 2\n")
    assert "YAML does not parse" in _one_line_error(cli("run", str(bad), check=False))


def test_serve_a_folder_that_is_not_a_run(tmp_path):
    assert "is not a finished run" in _one_line_error(cli("serve", str(tmp_path), check=False))
