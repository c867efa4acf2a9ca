"""The default `modelworks run` on the built-in data (about 3-4 minutes on 2 cores): slow job."""

import json

import pytest

from tests.conftest import cli


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quickstart_beats_unigram_clearly(tmp_path):
    cli("run", f"runs_dir={tmp_path}", timeout=900)
    m = json.loads((tmp_path / "quickstart" / "evaluate" / "metrics.json").read_text())
    assert m["perplexity"] < 0.3 * m["unigram_perplexity"], m
