"""Credentials never reach a log: ``user:password@`` inside any URL is masked.

``redact_url`` masks one string; ``install_log_redaction`` wraps the logging record factory so
every record of the process (ours, faust's, aiokafka's, aiohttp's) has its message masked when
it is created, whatever handler later writes it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

#: scheme://userinfo@ : the userinfo (user, or user:password) is what goes
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s?#]+)@")
MASK = "***"


def redact_url(text: str) -> str:
    """``text`` with the userinfo of every URL in it replaced by ``***``."""
    if "@" not in text:
        return text
    return _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)


def install_log_redaction() -> None:
    """Mask URL credentials in every log record created from now on (idempotent)."""
    current = logging.getLogRecordFactory()
    if getattr(current, "livepulse_redacts", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = current(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed log call: leave it to logging's own error report
            return record
        if "@" in message:
            record.msg, record.args = redact_url(message), ()
        return record

    factory.livepulse_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
