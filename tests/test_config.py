"""Configuration: every problem named by file and key; secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import config as cfgmod

BASE = """
[vms]
username = "vms"
password = "vms-secret-1"

[[camera]]
name = "lobby"
vendor = "hikvision"
host = "192.0.2.10"
username = "admin"
password = "p@ss:w/rd"
"""


def problems(text: str, source: str = "site.toml") -> list[tuple[str, str]]:
    with pytest.raises(cfgmod.ConfigError) as info:
        cfgmod.loads(text, source=source)
    assert all(line.startswith(f"{source}: ") for line in str(info.value).splitlines())
    return info.value.problems


def test_minimal_config_and_vendor_urls() -> None:
    config = cfgmod.loads(
        BASE
        + """
[[camera]]
name = "yard"
vendor = "dahua"
host = "192.0.2.11"
channel = 3
username = "admin"
password = "x"
"""
    )
    lobby, yard = config.cameras
    assert config.server.rtsp_port == 8554 and config.server.bind == "127.0.0.1"
    assert lobby.upstream_url("main", with_credentials=False) == (
        "rtsp://192.0.2.10:554/Streaming/Channels/101"
    )
    assert lobby.upstream_url("sub", with_credentials=False).endswith("/Streaming/Channels/102")
    # Credentials are URL-quoted so '@', ':' and '/' in passwords survive.
    assert lobby.upstream_url("main", with_credentials=True).startswith(
        "rtsp://admin:p%40ss%3Aw%2Frd@192.0.2.10:554/"
    )
    assert yard.upstream_url("sub", with_credentials=False) == (
        "rtsp://192.0.2.11:554/cam/realmonitor?channel=3&subtype=1"
    )
    assert lobby.stream_names() == ["main", "sub"]


def test_every_problem_is_reported_with_its_key() -> None:
    found = dict(
        problems("""
[server]
rtsp_port = 70000
bind = "not-an-ip"
[vms]
username = ""
[[camera]]
name = "bad name!"
vendor = "axis"
host = "192.0.2.1"
colour = "red"
[[camera]]
name = "gen"
vendor = "generic"
host = "192.0.2.2"
on_demand = "yes"
""")
    )
    assert found["server.rtsp_port"] == "must be a port number between 1 and 65535"
    assert "not an IP address" in found["server.bind"]
    assert found["vms.username"] == "must not be empty"
    assert found["vms.password"].startswith("is required")
    assert "letters, digits" in found["camera[0].name"]
    assert found["camera[0].vendor"] == "must be hikvision, dahua or generic, not 'axis'"
    assert found["camera[0].colour"] == "unknown key (check the spelling)"
    assert "is required for vendor 'generic'" in found["camera[1].main_url"]
    assert found["camera[1].on_demand"] == "must be a bool, not str 'yes'"


def test_duplicate_names_and_port_clashes() -> None:
    found = problems(
        BASE
        + BASE.split("[vms]")[0]
        + """
[[camera]]
name = "lobby"
vendor = "hikvision"
host = "192.0.2.12"
onvif_port = 8554
"""
    )
    assert ("camera[1].name", "duplicate camera name 'lobby'") in found
    assert ("camera[1].onvif_port", "port 8554 is already used by server.rtsp_port") in found


def test_secrets_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "vms.password"
    secret_file.write_text("from-file-secret\n")
    monkeypatch.setenv("LOBBY_PW", "from-env-secret")
    text = BASE.replace('password = "vms-secret-1"', f'password_file = "{secret_file.name}"')
    text = text.replace('password = "p@ss:w/rd"', 'password_env = "LOBBY_PW"')
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    config = cfgmod.load(path)
    assert config.vms.password.reveal() == "from-file-secret"
    assert config.cameras[0].password.reveal() == "from-env-secret"
    assert "from-env-secret" not in repr(config)
    assert "from-file-secret" not in repr(config)
    assert set(cfgmod.iter_secrets(config)) == {"from-file-secret", "from-env-secret"}


def test_missing_env_and_file_and_double_definition(tmp_path: Path) -> None:
    text = BASE.replace('password = "vms-secret-1"', 'password_env = "NO_SUCH_VARIABLE_X"')
    text = text.replace(
        'password = "p@ss:w/rd"', 'password = "a"\npassword_file = "/nonexistent/file"'
    )
    found = dict(problems(text))
    assert found["vms.password_env"] == "environment variable NO_SUCH_VARIABLE_X is not set"
    assert found["camera[0].password"] == "give only one of password, password_file"


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(cfgmod.ConfigError, match="cannot read file"):
        cfgmod.load(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[vms\nusername=1")
    with pytest.raises(cfgmod.ConfigError, match="not valid TOML"):
        cfgmod.load(broken)


def test_secret_never_prints() -> None:
    secret = cfgmod.Secret("hunter22")
    assert "hunter22" not in repr(secret) and "hunter22" not in str(secret)
    assert f"{secret}" == "Secret('********')"
    assert secret.reveal() == "hunter22"


def test_errors_name_the_camera_its_line_and_the_nearest_word() -> None:
    text = """[vms]
username = "vms"
password = "x"

[[camera]]
name = "lobby"
vendor = "hikvison"
host = "192.0.2.10"
pasword = "x"

[[camera]]
name = "yard"
vendor = "dahua"
host = "192.0.2.11"
onvif_port = 8000
"""
    with pytest.raises(cfgmod.ConfigError) as caught:
        cfgmod.loads(text, source="site.toml")
    lines = str(caught.value).splitlines()
    assert lines[0] == (
        'site.toml: camera "lobby" (camera[0], line 5): vendor: must be hikvision, dahua or '
        "generic, not 'hikvison' (did you mean \"hikvision\"?)"
    )
    assert lines[1] == (
        'site.toml: camera "lobby" (camera[0], line 5): pasword: unknown key '
        '(did you mean "password"?)'
    )
    # A misspelt vendor is one problem, not also "generic needs main_url".
    assert not any("main_url" in line for line in lines)
    # Keys for scripts stay as they were.
    assert [k for k, _ in caught.value.problems] == ["camera[0].vendor", "camera[0].pasword"]


def test_port_clash_names_the_camera_in_the_file_after_an_invalid_one() -> None:
    text = """[vms]
username = "vms"
password = "x"
[server]
onvif_base_port = 8000
[[camera]]
name = "bad name!"
host = "192.0.2.1"
[[camera]]
name = "lobby"
vendor = "hikvision"
host = "192.0.2.10"
[[camera]]
name = "yard"
vendor = "dahua"
host = "192.0.2.11"
onvif_port = 8000
"""
    found = problems(text)
    # lobby (the first valid camera) has 8000; the clash is yard's, camera[2] in the file.
    assert (
        "camera[2].onvif_port",
        'port 8000 is already used by camera "lobby" (camera[1], line 9) onvif_port',
    ) in found


def test_every_section_is_validated_as_check_and_run_see_it() -> None:
    from gateway import sections

    config = cfgmod.loads(
        '[vms]\nusername = "vms"\npassword = "x"\n[policy]\nauto_enforc = true\n'
        "[onvif]\nauth_windw = 60\n",
        source="site.toml",
    )
    with pytest.raises(cfgmod.ConfigError) as caught:
        sections.validate(config)
    found = dict(caught.value.problems)
    assert found["policy.auto_enforc"] == 'unknown key (did you mean "auto_enforce"?)'
    assert "onvif.auth_windw" in found


def test_ingest_is_auto_by_default_and_a_typo_is_named() -> None:
    config = cfgmod.loads(BASE)
    assert config.server.ingest == "auto" and config.cameras[0].ingest is None
    assert dict(problems('[server]\ningest = "natve"\n' + BASE)) == {
        "server.ingest": "must be auto, native or pyav, not 'natve' (did you mean \"native\"?)"
    }
    found = dict(problems(BASE + 'ingest = "ffmpeg"\n'))
    assert found["camera[0].ingest"] == "must be auto, native or pyav, not 'ffmpeg'"
