"""PII masking in the style of datatrove's PIIFormatter: e-mail and IP addresses are
replaced by fixed placeholders, so no address leaks into training data.

Only globally routable IPv4 addresses are replaced: private, loopback and documentation
ranges (192.168.x.x in a config example) identify nobody and are part of the text's
meaning in technical documents.
"""

from __future__ import annotations

import ipaddress
import re

EMAIL_PLACEHOLDER = "email@example.com"
IP_PLACEHOLDER = "192.0.2.1"  # RFC 5737 documentation address

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)")  # a sentence's final "." is fine


def _public_ip(match: re.Match) -> str:
    text = match.group(0)
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        return text
    return IP_PLACEHOLDER if address.is_global else text


def mask_pii(text: str) -> tuple[str, int, int]:
    """(masked text, e-mails replaced, IPs replaced)."""
    text, emails = _EMAIL.subn(lambda m: EMAIL_PLACEHOLDER if m.group(0) != EMAIL_PLACEHOLDER else m.group(0), text)
    ips = 0

    def replace(match: re.Match) -> str:
        nonlocal ips
        out = _public_ip(match)
        ips += out != match.group(0)
        return out

    text = _IPV4.sub(replace, text)
    return text, emails, ips
