"""Run reports: `report.md` and a self-contained `report.html` with embedded PNG plots."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from modelworks.artifacts import atomic_write_bytes, atomic_write_text  # noqa: E402


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss(records: list[dict], out: Path, baseline: float | None = None) -> None:
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1.2)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss", linewidth=1.5)
    if baseline is not None:
        ax.axhline(baseline, color="grey", linestyle="--", label="baseline (validation)")
    ax.set_title("Training loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    atomic_write_bytes(out, tmp.read_bytes())
    tmp.unlink()


def md_table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| metric | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def training_table(trained: dict) -> str:
    """The pretrain manifest's summary as a two-column table."""
    rows = [
        (
            k.replace("_", " "),
            f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v),
        )
        for k, v in trained.items()
        if not isinstance(v, dict)
    ]
    return md_table(rows)


def write_report(
    out_dir: Path, title: str, sections: list[tuple[str, str]], images: list[tuple[str, str]]
) -> None:
    """`sections` are (heading, markdown body); `images` are (PNG file in out_dir, caption)."""
    md = [f"# {title}", ""]
    for heading, body in sections:
        md += [f"## {heading}", "", body, ""]
    for image, caption in images:
        md += [f"## {caption}", "", f"![{caption}]({image})", ""]
    atomic_write_text(out_dir / "report.md", "\n".join(md))

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:900px;margin:2em auto;"
        "padding:0 1em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:4px 8px;text-align:left}pre{background:#f6f6f6;padding:8px;"
        "white-space:pre-wrap}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{_md_to_html(body)}")
    for image, caption in images:
        png = base64.b64encode((out_dir / image).read_bytes()).decode()
        cap = html.escape(caption)
        parts.append(f"<h2>{cap}</h2><img alt='{cap}' src='data:image/png;base64,{png}'>")
    parts.append("</body></html>")
    atomic_write_text(out_dir / "report.html", "\n".join(parts))


def _md_to_html(body: str) -> str:
    """Just enough markdown for our own reports: tables, fenced blocks, paragraphs."""
    out, lines, i = [], body.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip("|").split("|")]
                if not all(set(c) <= {"-", ":"} for c in cells):
                    rows.append(cells)
                i += 1
            head, *rest = rows
            out.append(
                "<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"
            )
            for r in rest:
                out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
            out.append("</table>")
            continue
        if line.startswith("```"):
            i += 1
            block = []
            while i < len(lines) and not lines[i].startswith("```"):
                block.append(lines[i])
                i += 1
            out.append(f"<pre>{html.escape(chr(10).join(block))}</pre>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
        i += 1
    return "\n".join(out)
