"""Logging: readable lines by default, JSON lines on demand; secrets redacted; repeats limited.

One line per event that matters. Call sites pass structured fields with
``log.info("camera up", extra={"camera": name, "stream": "main"})``; both formats show them.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Iterable

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
# Userinfo in URLs (rtsp://user:pass@host) never reaches a log line.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]*@", re.I)


class Redactor(logging.Filter):
    """Replaces registered secret values and URL credentials in every record."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: list[str] = []
        self._lock = threading.Lock()

    def add(self, secrets: Iterable[str]) -> None:
        with self._lock:
            new = {s for s in secrets if s and len(s) >= 3} | set(self._secrets)
            # Longest first, so a secret containing another is replaced whole.
            self._secrets = sorted(new, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        text = _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "********")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = self.scrub(message)
        if scrubbed != message or record.args:
            record.msg, record.args = scrubbed, None
        for key, value in list(vars(record).items()):
            if key not in _RESERVED and isinstance(value, str):
                setattr(record, key, self.scrub(value))
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class RateLimiter(logging.Filter):
    """Lets the same (logger, message, camera/stream) through at most once per ``interval``
    seconds.

    The next line after a quiet period says how many repeats were suppressed.
    """

    def __init__(self, interval: float = 30.0, max_keys: int = 4096) -> None:
        super().__init__()
        self.interval = interval
        self.max_keys = max_keys
        self._seen: dict[tuple[str, str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING and not getattr(record, "ratelimit", False):
            return True
        # Same message about a different camera or stream, or from another client address,
        # is a different event (so one abusive address cannot hide another's refusals).
        subject = (
            getattr(record, "stream", None)
            or getattr(record, "camera", None)
            or getattr(record, "source", None)
            or getattr(record, "peer", None)
            or ""
        )
        key = (record.name, str(record.msg), str(subject))
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._seen.get(key, (0.0, 0))
            if now - last < self.interval:
                self._seen[key] = (last, suppressed + 1)
                return False
            if len(self._seen) >= self.max_keys:
                self._seen.clear()
            self._seen[key] = (now, 0)
        if suppressed:
            record.msg = f"{record.msg} (repeated {suppressed} more times)"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_") and key != "ratelimit":
                entry[key] = (
                    value if isinstance(value, (int, float, bool, type(None))) else str(value)
                )
        if record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        fields = " ".join(
            f"{k}={v}"
            for k, v in vars(record).items()
            if k not in _RESERVED and not k.startswith("_") and k != "ratelimit"
        )
        line = f"{ts} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if fields:
            line += f" [{fields}]"
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


redactor = Redactor()
_configured = False


def setup(*, json_lines: bool = False, verbose: bool = False, level: str | None = None) -> None:
    """Configure the root logger once; later calls only change format and level."""
    global _configured
    root = logging.getLogger()
    handler: logging.Handler
    if not _configured:
        handler = logging.StreamHandler(sys.stderr)
        handler.addFilter(redactor)
        handler.addFilter(RateLimiter())
        root.handlers[:] = [handler]
        _configured = True
    handler = root.handlers[0]
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    name = "debug" if verbose else (level or "info")
    root.setLevel(getattr(logging, name.upper()))
    # Third-party chatter stays at warning unless debugging.
    for noisy in ("aiohttp.access", "zeep", "urllib3", "httpx", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


class WorkerTag(logging.Filter):
    """Names the worker process on each of its lines (``[server] workers``: the workers share
    one log, and a line must say which of them wrote it)."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "worker"):
            record.worker = self.index
        return True


def tag_worker(index: int) -> None:
    """From now on every line this process logs says ``worker=index``."""
    logging.getLogger().handlers[0].addFilter(WorkerTag(index))


def register_secrets(secrets: Iterable[str]) -> None:
    redactor.add(secrets)
