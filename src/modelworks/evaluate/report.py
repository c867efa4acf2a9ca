"""Run reports: `report.md` and a self-contained `report.html` with embedded PNG plots."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from modelworks.artifacts import atomic_write_bytes, atomic_write_text  # noqa: E402
from modelworks.errors import EvaluateError  # noqa: E402, F401  (public here too)


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


def plot_curves(records: list[dict], out: Path) -> bool:
    """Learning rate and throughput against the optimizer step, one panel each (the loss has its
    own plot); False when the log has neither."""
    panels = [
        ("lr", "Learning rate", "learning rate"),
        ("tok_per_s", "Training throughput", "tokens / second"),
    ]
    if not any("tok_per_s" in r for r in records):
        panels[1] = ("ex_per_s", "Training throughput", "examples / second")
    panels = [pn for pn in panels if any(pn[0] in r for r in records)]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), dpi=110)
    for ax, (key, title, unit) in zip(np.atleast_1d(axes), panels, strict=True):
        pts = [(r["step"], r[key]) for r in records if key in r]
        ax.plot(*zip(*pts, strict=True), linewidth=1.2)
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, out)
    return True


def save_png(fig, out: Path) -> None:
    """Save a matplotlib figure atomically and close it."""
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    atomic_write_bytes(out, tmp.read_bytes())
    tmp.unlink()


def funnel_section(pre: dict) -> str:
    """preprocess/stats.json as a table: documents and bytes in and out of every step, then the
    tokens of each split (tokens exist only after the tokenizer, the last step)."""
    rows = [
        "| step | documents in | documents out | bytes in | bytes out |",
        "|---|---|---|---|---|",
    ]
    for r in pre.get("funnel", []):
        rows.append(
            f"| {r['step']} | {r.get('in', 0):,} | {r.get('out', 0):,} | "
            f"{r.get('bytes_in', 0):,} | {r.get('bytes_out', 0):,} |"
        )
    text = "\n".join(rows)
    docs, toks = pre.get("documents"), pre.get("tokens")
    if isinstance(toks, dict):
        per = ", ".join(
            f"{k}: {docs.get(k, 0) if isinstance(docs, dict) else '?':,} documents, {v:,} tokens"
            for k, v in toks.items()
        )
        text += f"\n\nTokenized ({per}); vocabulary {pre.get('vocab_size', '?')}."
    return text


def config_section(config: dict) -> str:
    import yaml

    return "```\n" + yaml.safe_dump(config, sort_keys=False).strip() + "\n```"


def md_cell(text: str, limit: int = 200) -> str:
    """Text safe in a Markdown table cell: pipes escaped, one line, at most `limit` characters,
    and an empty text shown as ∅."""
    return (text or "∅").replace("|", "\\|").replace("\n", " ")[:limit]


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


def bad_rows_section(bad_rows: dict) -> str:
    """collect's skipped rows (its summary's `bad_rows`) as a table: source, reason, count and
    the first rows as file:line."""
    lines = ["| source | reason | rows | first |", "|---|---|---|---|"]
    for where, b in bad_rows.items():
        for reason, r in b["reasons"].items():
            lines.append(
                f"| {where} | {reason} | {r['count']:,} | {md_cell('; '.join(r['first']), 600)} |"
            )
    total = sum(b["bad"] for b in bad_rows.values())
    rows = sum(b["rows"] for b in bad_rows.values())
    return f"{total:,} of {rows:,} rows were skipped when the data was collected.\n\n" + "\n".join(
        lines
    )


def write_report(
    out_dir: Path,
    title: str,
    sections: list[tuple[str, str]],
    images: list[tuple[str, str]],
    opening: list[str] = (),
) -> None:
    """`sections` are (heading, markdown body); `images` are (PNG file in out_dir, caption);
    `opening` are lines right under the title (`**bold**` paragraphs or `- ` list items)."""
    md = [f"# {title}", *opening, ""]
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
    items = [html.escape(line[2:]) for line in opening if line.startswith("- ")]
    for line in opening:
        if not line.startswith("- "):
            parts.append(f"<p><strong>{html.escape(line.strip('*'))}</strong></p>")
    if items:
        parts.append("<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>")
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
