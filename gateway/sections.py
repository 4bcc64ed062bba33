"""The whole configuration, as `check`, `run` and every reload accept it.

``gateway.config`` validates the sections it owns; the sections other subsystems own
(``[policy]``, ``[onvif]``) are validated by those subsystems. This module runs all of them
and reports every problem at once, so that "valid" means the same to `check`, to `run`, to a
SIGHUP and to the admin API's reload: a typo in ``[policy]`` stops `check` (and with it the
unit's ExecStartPre), instead of a gateway starting with its policy loop silently off.
"""

from __future__ import annotations

import os

from gateway import config as cfgmod
from gateway import fleet
from gateway.onvif.config import parse_settings
from gateway.policy.config import parse_policy

# Each section with the subsystem's parser. `run` starts the policy loop only for a file with
# a [policy] section, so that is when `check` holds the file to it too; `audit` and `enforce`
# apply the policy's defaults to a file without one and say what those need.
SECTION_PARSERS = {"policy": parse_policy, "onvif": parse_settings, "fleet": fleet.parse_fleet}


def validate(config: cfgmod.Config) -> None:
    """Raise :class:`gateway.config.ConfigError` listing the problems of every section."""
    problems: list[tuple[str, str]] = []
    for name, parse in SECTION_PARSERS.items():
        if name not in config.sections:
            continue
        try:
            parse(config)
        except cfgmod.ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise cfgmod.ConfigError(config.source, problems)


def load_site(path: str | os.PathLike[str]) -> cfgmod.Config:
    """:func:`gateway.config.load`, then :func:`validate`: the whole site's file, every
    camera (sections are judged against all of them, e.g. ``[policy]`` naming a camera
    another shard of the fleet serves)."""
    config = cfgmod.load(path)
    validate(config)
    return config


def load(path: str | os.PathLike[str]) -> cfgmod.Config:
    """:func:`load_site`, narrowed to the cameras this gateway serves (``[fleet]``)."""
    return fleet.own(load_site(path))
