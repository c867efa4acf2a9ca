"""Every benchmark script imports the way the tests load it (`load_benchmark`), so a broken import
fails the default suite, not only the slow job that runs a benchmark's code (the soak test)."""

from __future__ import annotations

import pytest

from tests.conftest import BENCHMARKS, load_benchmark

SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py") if not p.stem.startswith("_"))


def test_benchmark_folder_has_scripts():
    assert "serve" in SCRIPTS and len(SCRIPTS) >= 10


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_script_imports(name):
    module = load_benchmark(name)
    # each script is a command: `main()` under `if __name__ == "__main__"`, nothing run on import
    assert callable(getattr(module, "main", None)), f"benchmarks/{name}.py has no main()"
