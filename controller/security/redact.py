"""A logging filter that keeps secrets and presigned URLs out of every log line.

Logs travel further than secrets should: to journald, to a log shipper, into bug reports. The filter
rewrites each record's final message (after %-formatting, so arguments are covered too) and replaces:

| what                                     | example                                  | becomes              |
|------------------------------------------|------------------------------------------|----------------------|
| edgefleet tokens (operator, enrollment)  | `efo_Zx…`, `efe_Q1…`                     | `efo_[REDACTED]`     |
| Authorization header values              | `Bearer abc`, `Basic ZGV2…`              | `Bearer [REDACTED]`  |
| presigned URL signatures and credentials | `?X-Amz-Signature=…`, `&signature=…`     | `signature=[REDACTED]` |
| `password=` / `secret=` style pairs      | `password=hunter2`, `"secret_key": "x"`  | `password=[REDACTED]` |
| PEM private keys                         | `-----BEGIN PRIVATE KEY-----…`           | `[REDACTED PRIVATE KEY]` |
| Mosquitto password hashes                | `$7$101$…$…`                             | `$7$[REDACTED]`      |

It is installed on handlers (not loggers), so records propagated from any library — uvicorn's access
log, boto3, paho — pass through it. Redaction is by pattern: it cannot know a secret that looks like
ordinary text, which is why secrets in this project all carry recognisable prefixes or field names.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

MARK = "[REDACTED]"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?(-----END \1PRIVATE KEY-----|$)", re.S),
        "[REDACTED PRIVATE KEY]",
    ),
    (re.compile(r"\b(ef[a-z])_[A-Za-z0-9_-]{8,}"), r"\1_" + MARK),
    (re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=:-]+"), r"\1 " + MARK),
    (
        re.compile(
            r"([?&;](?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|signature|"
            r"AWSAccessKeyId|sig|token|access_token)=)[^&\s\"'#]+",
            re.I,
        ),
        r"\1" + MARK,
    ),
    (
        re.compile(
            r"(\"?(?:password|passwd|secret|secret_key|secret_access_key|access_key|api_key|token|"
            r"mqtt_password|s3_secret_key|s3_access_key)\"?\s*[=:]\s*\"?)[^\s\"',;&}]+",
            re.I,
        ),
        r"\1" + MARK,
    ),
    (re.compile(r"\$7\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+"), "$7$" + MARK),
    # URL userinfo: scheme://user:password@host
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]+:)[^@\s/]+@", re.I), r"\1" + MARK + "@"),
)


def redact(text: str) -> str:
    """`text` with every recognised secret replaced."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites records in place; never drops one (a filter that drops would hide incidents)."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Arguments are redacted one by one rather than merged into the message, because some
        # formatters (uvicorn's access log) read `record.args` themselves.
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_value(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _redact_value(v) for k, v in record.args.items()}
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def _redact_value(value: object) -> object:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    text = str(value)  # exceptions, URLs, paths: formatted with %s anyway
    cleaned = redact(text)
    return cleaned if cleaned != text else value


def install_redaction(loggers: Iterable[str] = ("", "uvicorn", "uvicorn.access", "uvicorn.error")) -> RedactingFilter:
    """Attach one shared filter to every handler of the named loggers (idempotent)."""
    shared = RedactingFilter()
    for name in loggers:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(shared)
    return shared
