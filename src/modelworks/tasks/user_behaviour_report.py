"""The user_behaviour report's tables (markdown): the log, analytics, propensity results and
the events that weighed most."""

from __future__ import annotations

from modelworks.evaluate import segments as seg
from modelworks.evaluate.report import md_table


def why_table(why: dict) -> str:
    head = (
        "| events before the cutoff | value | event | gap bucket | weight |\n|---|---|---|---|---|"
    )
    rows = [
        f"| {e['from_end']} | {e.get('value', '')} | {e.get('event', '')} | "
        f"{e['gap_bucket']} | {e['weight']:+.2e} |"
        for e in why["events"]
    ]
    return (
        f"propensity {why['propensity']:.3f}; weight = gradient x input (embedding)\n\n"
        + "\n".join([head, *rows])
    )


def results_table(results: dict, bg_how: str) -> str:
    head = "| method | AUC | log loss | ECE | top-decile lift |\n|---|---|---|---|---|"
    rows = [
        f"| {n} | {r['auc']:.4f} | {r['log_loss']:.4f} | {r['ece']:.4f} | "
        f"{r['lift_top_decile']:.2f} |"
        for n, r in results.items()
    ]
    return "\n".join([head, *rows]) + f"\n\nBG/NBD: {bg_how}."


def log_table(stats: dict) -> str:
    keys = (
        "events",
        "users",
        "duplicates",
        "out_of_order",
        "single_event_users",
        "sessions",
        "first_event",
        "last_event",
        "cutoff",
    )
    return md_table([(k.replace("_", " "), str(stats[k])) for k in keys if k in stats])


def analytics_tables(a: dict, min_group: int) -> str:
    s = a["sessions"]
    parts = [
        f"{s['count']:,} sessions ({s['gap_minutes']:g} min gap), {s['per_user']} per "
        f"user, {s['events_per_session']} events each, median {s['median_minutes']} min."
    ]
    for name, steps in a["funnel"].items():
        parts.append(
            f"Funnel ({name.replace('_', ' ')}): "
            + " -> ".join(f"{st['step']} {st['count']:,} ({st['of_first']:.1%})" for st in steps)
        )
    head = "| RFM cell | users | recency days | purchases | revenue |\n|---|---|---|---|---|"
    rows = [
        f"| {c} | {seg.hide_small(v['users'], min_group)} | "
        + (
            " - | - | - |"
            if v["users"] < min_group
            else f"{v['recency_days']} | {v['frequency']} | {v['monetary']} |"
        )
        for c, v in a["rfm"].items()
    ]
    return "\n\n".join([*parts, "\n".join([head, *rows])])
