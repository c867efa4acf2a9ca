"""PII redaction with typed placeholders: <EMAIL>, <PHONE>, <IP_ADDRESS>, <CREDIT_CARD>, <IBAN>,
<SECRET>, <PRIVATE_KEY>.

Patterns are checked, not just matched, to keep look-alikes (versions, dates, order numbers):
credit cards must pass the Luhn check, IBANs the ISO 13616 mod-97 check, IPv6 addresses must
parse with `ipaddress`, IPv4 addresses preceded by "v"/"version" are read as version numbers,
phone numbers need a `+country` prefix, a (NNN) NNN-NNNN / NNN-NNN-NNNN shape or a
0-trunk-prefixed national form, with 7-15 digits. Counts per type go to the report. With
`mapping_path` the placeholders are numbered (<EMAIL_1>) and `{id, placeholder, original}` lines
are written there, so redaction can be reversed by whoever holds that file; without it nothing of
the original is kept.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from modelworks.preprocess.steps import Step


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    s = candidate.replace(" ", "").upper()
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    try:
        return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1
    except ValueError:
        return False


def _digits(s: str) -> str:
    return re.sub(r"\D", "", s)


def _cc_ok(m: re.Match) -> bool:
    d = _digits(m.group())
    return 13 <= len(d) <= 19 and luhn_ok(d)


def _ipv6_ok(m: re.Match) -> bool:
    try:
        ipaddress.IPv6Address(m.group())
    except ValueError:
        return False
    # "a::b" parses too: ask for 3 groups, or 2 that both hold a digit (fe80::1), as C++'s
    # scope operator and similar code rarely has either
    groups = [g for g in m.group().split(":") if g]
    return len(groups) >= 3 or (len(groups) == 2 and all(re.search(r"\d", g) for g in groups))


def _ipv4_ok(m: re.Match) -> bool:
    before = m.string[max(0, m.start() - 9) : m.start()].lower()
    return not re.search(r"(?:\bv|version\s?)$", before)


def _phone_ok(m: re.Match) -> bool:
    return 7 <= len(_digits(m.group())) <= 15


_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# (type, pattern, check): applied in this order, so a key block is gone before emails are sought
PATTERNS: list[tuple[str, re.Pattern, Callable[[re.Match], bool] | None]] = [
    (
        "PRIVATE_KEY",
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
        None,
    ),
    (
        "SECRET",
        re.compile(
            r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"  # AWS access key id
            r"|\bgh[pousr]_[A-Za-z0-9]{36,}\b"  # GitHub tokens
            r"|\bgithub_pat_[A-Za-z0-9_]{22,}\b"
            r"|\bxox[abprs]-[A-Za-z0-9-]{10,}\b"  # Slack
            r"|\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}\b"  # OpenAI / Anthropic style
            r"|\bAIza[0-9A-Za-z_-]{35}\b"  # Google API key
            r"|\bhf_[A-Za-z0-9]{30,}\b"  # Hugging Face
            r"|(?<=[=:] )[\"']?(?=[A-Za-z0-9+/_-]*\d)(?=[A-Za-z0-9+/_-]*[A-Za-z])"
            r"[A-Za-z0-9+/_-]{32,}[\"']?(?=\s|$)"  # long mixed token after "key = "
        ),
        None,
    ),
    (
        "EMAIL",
        re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
        None,
    ),
    (
        "IBAN",
        re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"),
        lambda m: iban_ok(m.group()),
    ),
    ("CREDIT_CARD", re.compile(r"(?<![\d.-])\d(?:[ -]?\d){12,18}(?![\d.-])"), _cc_ok),
    (
        "IP_ADDRESS",
        re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])"),
        _ipv6_ok,
    ),
    (
        "IP_ADDRESS",
        re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w.]|\.\d)"),
        _ipv4_ok,
    ),
    (
        "PHONE",
        re.compile(
            r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?![\w-])"  # +44 20 7946 0958
            r"|(?<![\w(])\(\d{3}\) ?\d{3}[ .-]\d{4}(?![\w-])"  # (555) 123-4567
            r"|(?<![\w.-])\d{3}[.-]\d{3}[.-]\d{4}(?![\w.-])"  # 555-123-4567
            r"|(?<![\w.-])0\d{1,4}[ -]\d{3,4}[ -]?\d{3,4}(?![\w.-])"  # 020 7946 0958
        ),
        _phone_ok,
    ),
]


class RedactPII(Step):
    """Replaces personal data and secrets with typed placeholders and counts them per type."""

    name = "pii"

    def __init__(self, types: list[str] | None = None, mapping_path: str | None = None) -> None:
        super().__init__()
        known = {t for t, _, _ in PATTERNS}
        chosen = set(types or known)
        if unknown := chosen - known:
            raise ValueError(f"types: unknown {sorted(unknown)}; known: {sorted(known)}")
        self.patterns = [p for p in PATTERNS if p[0] in chosen]
        self.mapping_path = Path(mapping_path) if mapping_path else None
        self._mapping: list[dict] = []

    def redact(self, text: str, doc_id: str = "") -> str:
        for kind, pattern, check in self.patterns:

            def replace(m: re.Match, kind=kind, check=check) -> str:
                if check is not None and not check(m):
                    return m.group()
                self.stats[f"redacted:{kind}"] += 1
                if self.mapping_path is None:
                    return f"<{kind}>"
                placeholder = f"<{kind}_{self.stats[f'redacted:{kind}']}>"
                self._mapping.append(
                    {"id": doc_id, "placeholder": placeholder, "original": m.group()}
                )
                return placeholder

            text = pattern.sub(replace, text)
        return text

    def apply(self, doc: dict) -> dict:
        doc["text"] = self.redact(doc["text"], doc["id"])
        return doc

    def close(self) -> None:
        """Writes the mapping file (atomically), when one was asked for."""
        if self.mapping_path is None:
            return
        self.mapping_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.mapping_path.with_name(self.mapping_path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for row in self._mapping:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, self.mapping_path)


def restore(text: str, mapping: list[dict]) -> str:
    """Undo numbered redaction with the rows of a mapping file."""
    for row in mapping:
        text = text.replace(row["placeholder"], row["original"], 1)
    return text
