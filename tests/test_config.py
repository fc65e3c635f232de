"""Config loading: every mistake is an error naming the file, the key and the reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy.cli import main
from proxy.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent

MINIMAL = """
[providers.local]
kind = "echo"

[[models]]
name = "m"
targets = [{ provider = "local", model = "echo-1" }]

[[keys]]
name = "dev"
key = "sk-1"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gw.toml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text), env=env or {})
    return str(e.value)


def test_minimal_config_loads(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL), env={})
    assert cfg.models["m"].targets[0].model == "echo-1"
    assert cfg.server.port == 8080 and cfg.server.require_auth is True
    assert cfg.keys[0].key_hash != "sk-1" and len(cfg.keys[0].key_hash) == 64


@pytest.mark.parametrize("text,expected", [
    (MINIMAL + "\n[server]\nbogus = 1\n", "gw.toml:server.bogus: unknown key"),
    (MINIMAL.replace('name = "m"', 'name = "m"\ncolour = "red"'), "gw.toml:models[0].colour: unknown key"),
    ("[server]\nport = \"80\"\n" + MINIMAL, "gw.toml:server.port: expected a number, got a string"),
    ("[server]\nrequire_auth = 1\n" + MINIMAL, "gw.toml:server.require_auth: expected a boolean, got an integer"),
    (MINIMAL.replace('provider = "local"', 'provider = "ghost"'),
     "gw.toml:models[0].targets[0].provider: undefined provider 'ghost'"),
    (MINIMAL + '\n[[models]]\nname = "m"\ntargets = [{ provider = "local" }]\n',
     "gw.toml:models[1].name: duplicate alias 'm'"),
    (MINIMAL.replace('kind = "echo"', 'kind = "magic"'), "gw.toml:providers.local.kind: unknown kind 'magic'"),
    (MINIMAL.replace('targets = [{ provider = "local", model = "echo-1" }]', "targets = []"),
     "gw.toml:models[0].targets: needs at least one target"),
    ("[storage]\ndatabase_url = \"mysql://x\"\n" + MINIMAL, "gw.toml:storage.database_url: must start with"),
    (MINIMAL.replace('[[keys]]\nname = "dev"\nkey = "sk-1"\n', ""), "gw.toml:keys: require_auth is true"),
    ("[server\n", "gw.toml:-: invalid TOML"),
    (MINIMAL.replace('model = "echo-1" }', 'model = "echo-1", failure_rate = 1.5 }'),
     "gw.toml:models[0].targets[0].failure_rate: must be a share of attempts, at most 1"),
    (MINIMAL.replace('model = "echo-1" }', 'model = "echo-1", failure_window_s = 0 }'),
     "gw.toml:models[0].targets[0].failure_window_s: must be >= 0.001"),
])
def test_errors_name_file_key_and_reason(tmp_path, text, expected):
    assert expected in error_of(tmp_path, text)


def test_interpolation_with_defaults(tmp_path):
    text = MINIMAL.replace('key = "sk-1"', 'key = "${DEV_KEY:-sk-default}"') + """
[providers.up]
kind = "openai"
base_url = "${UP_URL}/v1"
api_key = "${UP_KEY}"
headers = { "X-Title" = "${TITLE:-gateway}" }
"""
    text = text.replace('targets = [{ provider = "local", model = "echo-1" }]',
                        'targets = [{ provider = "up", model = "gpt" }]')
    cfg = load_config(write(tmp_path, text), env={"UP_URL": "http://h:1", "UP_KEY": "k1"})
    up = cfg.providers["up"]
    assert (up.base_url, up.api_key, up.headers) == ("http://h:1/v1", "k1", {"X-Title": "gateway"})
    from proxy.auth import hash_key
    assert cfg.keys[0].key_hash == hash_key("sk-default")


def test_missing_variable_is_an_error_only_when_the_provider_is_used(tmp_path):
    unused = MINIMAL + '\n[providers.openai]\nkind = "openai"\napi_key = "${OPENAI_API_KEY}"\n'
    cfg = load_config(write(tmp_path, unused), env={})
    assert "openai" not in cfg.providers
    used = unused.replace('provider = "local"', 'provider = "openai"')
    message = error_of(tmp_path, used)
    assert "gw.toml:providers.openai.api_key: environment variable OPENAI_API_KEY is not set" in message
    outside = MINIMAL.replace('key = "sk-1"', 'key = "${NOPE}"')
    assert "gw.toml:keys[0].key: environment variable NOPE" in error_of(tmp_path, outside)


def test_key_sha256_instead_of_secret(tmp_path):
    from proxy.auth import hash_key
    digest = hash_key("sk-secret")
    cfg = load_config(write(tmp_path, MINIMAL.replace('key = "sk-1"', f'key_sha256 = "{digest}"')), env={})
    assert cfg.keys[0].key_hash == digest


def test_shipped_config_passes_check(capsys):
    assert main(["check", "--config", str(ROOT / "gateway.toml")]) == 0
    out = capsys.readouterr().out
    assert "gateway.toml: ok" in out and "gpt-4o-mini -> local/echo-1" in out
    assert "sk-gateway-dev" not in out  # never a secret


def test_check_reports_file_key_reason_and_fails(tmp_path, capsys):
    path = write(tmp_path, MINIMAL + "\n[server]\nport = 99999\n")
    assert main(["check", "--config", str(path)]) == 2
    assert f"{path}:server.port: must be <= 65535" in capsys.readouterr().err


def test_check_uses_gateway_config_env(tmp_path):
    path = write(tmp_path, MINIMAL)
    out = subprocess.run([sys.executable, "-m", "proxy.cli", "check"], capture_output=True, text=True,
                         env={"GATEWAY_CONFIG": str(path), "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert out.returncode == 0 and "m -> local/echo-1" in out.stdout


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "serve" in out and "check" in out
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "--config" in out and "--workers" in out and "--port" in out


def test_parse_config_rejects_non_table_sections():
    with pytest.raises(ConfigError, match="x.toml:server: expected a table"):
        parse_config({"server": 3}, "x.toml", {})


@pytest.mark.parametrize("field", ["api_key", "header"])
def test_provider_credentials_with_a_line_break_are_refused_at_start(tmp_path, field):
    """A key read from an env file with its line end would split the request's headers upstream."""
    extra = '\n[providers.up]\nkind = "openai"\nbase_url = "http://h:1/v1"\n' + (
        'api_key = "${UP_KEY}"\n' if field == "api_key" else 'headers = { "x-api-key" = "${UP_KEY}" }\n')
    text = (MINIMAL + extra).replace('provider = "local", model = "echo-1"', 'provider = "up", model = "gpt"')
    path = write(tmp_path, text)
    assert load_config(path, env={"UP_KEY": "sk-good"}).providers["up"]
    with pytest.raises(ConfigError) as e:
        load_config(path, env={"UP_KEY": "sk-bad\n"})
    expected = "providers.up.api_key" if field == "api_key" else "providers.up.headers.x-api-key"
    assert f"gw.toml:{expected}: must not contain a line break" in str(e.value)


def test_admin_key_alone_is_enough_with_require_auth(tmp_path):
    """No [[keys]] but an admin_key: keys are created at run time through /admin/keys."""
    text = '[server]\nadmin_key = "${ADMIN:-adm-1}"\n' + MINIMAL.replace('[[keys]]\nname = "dev"\nkey = "sk-1"\n', "")
    cfg = load_config(write(tmp_path, text), env={})
    assert cfg.keys == [] and cfg.server.require_auth is True and cfg.server.admin_key == "adm-1"


def test_no_keys_and_no_admin_key_is_refused_with_file_key_and_reason(tmp_path):
    text = MINIMAL.replace('[[keys]]\nname = "dev"\nkey = "sk-1"\n', "")
    message = error_of(tmp_path, text)
    assert message.startswith("gw.toml:keys: ") or ":keys: " in message
    assert "no [[keys]]" in message and "server.admin_key is not set" in message


def test_serve_says_keys_come_from_the_admin_api(tmp_path, monkeypatch, caplog):
    import logging

    import uvicorn

    from proxy import cli

    text = '[server]\nadmin_key = "adm-1"\n' + MINIMAL.replace('[[keys]]\nname = "dev"\nkey = "sk-1"\n', "")
    path = write(tmp_path, text)
    monkeypatch.setenv("GATEWAY_CONFIG", "unused")  # serve sets both; monkeypatch restores them
    monkeypatch.setenv("GATEWAY_PORT", "0")
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    with caplog.at_level(logging.INFO, logger="gateway"):
        assert cli.main(["serve", "--config", str(path)]) == 0
    lines = [r.getMessage() for r in caplog.records if "admin API" in r.getMessage()]
    assert len(lines) == 1 and "no [[keys]]" in lines[0]


def test_serve_defaults_come_from_gateway_env(monkeypatch, capsys):
    from proxy.cli import build_parser

    monkeypatch.setenv("GATEWAY_HOST", "0.0.0.0")
    monkeypatch.setenv("GATEWAY_PORT", "9123")
    monkeypatch.setenv("GATEWAY_WORKERS", "3")
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.workers) == ("0.0.0.0", 9123, 3)
    args = build_parser().parse_args(["serve", "--port", "80", "--workers", "1"])  # flags win
    assert (args.port, args.workers) == (80, 1)
    for name in ("GATEWAY_HOST", "GATEWAY_PORT", "GATEWAY_WORKERS"):
        monkeypatch.delenv(name)
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.workers) == (None, None, 1)
    monkeypatch.setenv("GATEWAY_WORKERS", "many")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve"])
    assert "invalid int value: 'many'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "$GATEWAY_HOST" in out and "$GATEWAY_PORT" in out and "$GATEWAY_WORKERS" in out
