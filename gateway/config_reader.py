"""Reading the configuration's TOML tables, and checking single values.

:class:`_Reader` gives typed access to one table and records every problem instead of
raising, so all the problems of a file are reported in one pass; :class:`Secret` wraps a
credential so that it never shows itself. The checks (ports, addresses, hosts, URLs, port
ranges, ``${VAR}`` expansion, "did you mean" suggestions) are shared by
:mod:`gateway.config` and the subsystems that validate their own sections.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar


class Secret:
    """A credential that never shows itself in logs, reprs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


T = TypeVar("T")


class _Reader:
    """Typed access to one TOML table that records problems instead of raising."""

    def __init__(
        self, table: dict[str, Any], prefix: str, problems: list[tuple[str, str]], base_dir: Path
    ) -> None:
        self.table = table
        self.prefix = prefix
        self.problems = problems
        self.base_dir = base_dir
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, message: str) -> None:
        self.problems.append((self.key(name), message))

    def get(
        self,
        name: str,
        kind: type[T] | tuple[type, ...],
        default: Any = ...,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        self.used.add(name)
        if name not in self.table:
            if default is ...:
                self.error(name, "is required")
                return None
            return default
        value = self.table[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # TOML booleans are ints in Python; never accept one for the other.
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if int in kinds and float in kinds and isinstance(value, bool):
            ok = False
        if not ok:
            names = " or ".join(k.__name__ for k in kinds)
            self.error(name, f"must be {_article(names)}, not {type(value).__name__} {value!r}")
            return None if default is ... else default
        if check is not None:
            message = check(value)
            if message:
                self.error(name, message)
                return None if default is ... else default
        return value

    def secret(self, name: str, required: bool = True) -> Secret | None:
        """``name``, ``name_env`` or ``name_file``: exactly one must be given."""
        options = [n for n in (name, f"{name}_env", f"{name}_file") if n in self.table]
        self.used.update({name, f"{name}_env", f"{name}_file"})
        if not options:
            if required:
                self.error(name, f"is required (or {name}_env / {name}_file)")
            return None
        if len(options) > 1:
            self.error(name, f"give only one of {', '.join(options)}")
            return None
        opt = options[0]
        raw = self.table[opt]
        if not isinstance(raw, str) or not raw:
            self.error(opt, "must be a non-empty string")
            return None
        if opt == name:
            return Secret(raw)
        if opt.endswith("_env"):
            value = os.environ.get(raw)
            if value is None:
                self.error(opt, f"environment variable {raw} is not set")
                return None
            if not value:
                self.error(opt, f"environment variable {raw} is empty")
                return None
            return Secret(value)
        expanded, missing = expand_env(raw)
        if missing:
            self.error(opt, f"environment variable {missing} is not set (used in {raw!r})")
            return None
        path = Path(expanded)
        if not path.is_absolute():
            path = self.base_dir / path
        try:
            value = path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            self.error(opt, f"cannot read {path}: {exc.strerror or exc}")
            return None
        if not value:
            self.error(opt, f"{path} is empty")
            return None
        return Secret(value)

    def finish(self) -> None:
        for name in sorted(set(self.table) - self.used):
            self.error(name, "unknown key" + did_you_mean(name, self.used, "check the spelling"))


def did_you_mean(word: str, choices: Iterable[str], otherwise: str = "") -> str:
    """`` (did you mean "x"?)`` for the nearest of ``choices``, else `` (otherwise)``."""
    near = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    if near:
        return f' (did you mean "{near[0]}"?)'
    return f" ({otherwise})" if otherwise else ""


def one_of(*choices: str) -> Callable[[str], str | None]:
    """A check that the value is one of ``choices``, suggesting the nearest when not."""

    def check(value: str) -> str | None:
        if value in choices:
            return None
        listed = ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]
        return f"must be {listed}, not {value!r}" + did_you_mean(value, choices)

    return check


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(text: str) -> tuple[str, str | None]:
    """``text`` with every ``${VAR}`` replaced by the variable's value, and the name of the
    first variable that is not set (then the text is returned unchanged). Only the braced form
    is expanded, so a path with a plain ``$`` in it stays what it says. systemd's
    ``LoadCredential=`` is used as ``password_file = "${CREDENTIALS_DIRECTORY}/vms"``."""
    for name in _ENV_REF.findall(text):
        if name not in os.environ:
            return text, name
    return _ENV_REF.sub(lambda m: os.environ[m.group(1)], text), None


def _article(names: str) -> str:
    return ("an " if names[:1] in "aeiou" else "a ") + names


def _port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else "must be a port number between 1 and 65535"


def _ipv4_networks(value: list[Any]) -> str | None:
    for item in value:
        try:
            ipaddress.IPv4Network(str(item), strict=False)
        except ValueError:
            return f"{item!r} is not an IPv4 network (e.g. 10.0.0.0/24)"
    return None


def parse_port_range(value: str) -> tuple[int, int]:
    """``"30000-30999"`` -> (30000, 30999); ValueError saying what is wrong."""
    match = re.fullmatch(r"\s*(\d{1,5})\s*-\s*(\d{1,5})\s*", value)
    if match is None:
        raise ValueError(f'must be a range like "30000-30999", not {value!r}')
    first, last = int(match.group(1)), int(match.group(2))
    if not (1024 <= first <= 65535 and 1024 <= last <= 65535):
        raise ValueError("ports must be between 1024 and 65535")
    if first > last:
        raise ValueError(f"the first port must not be above the last ({first} > {last})")
    if (first + 1) // 2 * 2 + 1 > last:
        raise ValueError("must hold an even/odd port pair (RTP on the even, RTCP on the odd)")
    return first, last


def _port_range(value: str) -> str | None:
    try:
        parse_port_range(value)
    except ValueError as exc:
        return str(exc)
    return None


def _optional_range(value: str | None) -> tuple[int, int] | None:
    return parse_port_range(value) if value is not None else None


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than zero"


def _ip(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"{value!r} is not an IP address"
    return None


def _own_address(value: str) -> str | None:
    """A per-camera address: one IP, not a wildcard."""
    problem = _ip(value)
    if problem is None and ipaddress.ip_address(value).is_unspecified:
        problem = f"{value!r} is a wildcard; give the camera's own address"
    return problem


def _host(value: str) -> str | None:
    if not value or any(c.isspace() for c in value) or "/" in value or "@" in value:
        return f"{value!r} is not a host name or address"
    return None


def _rtsp_url(value: str) -> str | None:
    if not re.match(r"^rtsps?://[^/\s]+(/\S*)?$", value):
        return f"{value!r} is not an rtsp:// URL"
    return None


def _table(reader: _Reader, name: str, required: bool) -> dict[str, Any] | None:
    reader.used.add(name)
    value = reader.table.get(name)
    if value is None:
        if required:
            reader.error(name, "section is required")
        return None
    if not isinstance(value, dict):
        reader.error(name, "must be a table ([" + name + "])")
        return None
    return value
