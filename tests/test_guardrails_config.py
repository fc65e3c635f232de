"""[[guardrails]] and the names that attach them are checked at start: file, key and reason."""

from __future__ import annotations

import tomllib

import pytest

from proxy.config import parse_config
from proxy.settings import ConfigError

BASE = """
[server]
require_auth = false
{server}

[providers.local]
kind = "echo"

[[models]]
name = "m"
targets = [{{ provider = "local" }}]
{alias}

{guardrails}
"""


def _load(guardrails: str, server: str = "", alias: str = "") -> object:
    text = BASE.format(server=server, alias=alias, guardrails=guardrails)
    return parse_config(tomllib.loads(text), "gw.toml", {})


@pytest.mark.parametrize("body, key, reason", [
    ('[[guardrails]]\nname = "x"\nkind = "nope"', "guardrails[0].kind", "must be one of"),
    ('[[guardrails]]\nname = "x"', "guardrails[0].kind", "is required"),
    ('[[guardrails]]\nname = "x"\nkind = "pii"\nentities = ["email", "dna"]', "guardrails[0].entities[1]",
     "unknown entity 'dna'"),
    ('[[guardrails]]\nname = "x"\nkind = "pii"\naction = "block"\nrestore = true', "guardrails[0].restore",
     "restore needs"),
    ('[[guardrails]]\nname = "x"\nkind = "injection"\naction = "redact"', "guardrails[0].action", "must be one of"),
    ('[[guardrails]]\nname = "x"\nkind = "injection"\nthreshold = 2', "guardrails[0].threshold", "between 0 and 1"),
    ('[[guardrails]]\nname = "x"\nkind = "regex"\npatterns = { a = "(" }', "guardrails[0].patterns.a",
     "invalid regular expression"),
    ('[[guardrails]]\nname = "x"\nkind = "python"\nfunction = "no_such_module_xyz:f"', "guardrails[0].function",
     "cannot import"),
    ('[[guardrails]]\nname = "x"\nkind = "python"\nfunction = "os:no_such_function"', "guardrails[0].function",
     "has no function"),
    ('[[guardrails]]\nname = "x"\nkind = "webhook"\nurl = "ftp://x"', "guardrails[0].url", "must start with"),
    ('[[guardrails]]\nname = "x"\nkind = "llm"\nmodel = "absent"', "guardrails[0].model", "not an alias"),
    ('[[guardrails]]\nname = "x"\nkind = "llm"\nmodel = "m"\nprompt = "no slot"', "guardrails[0].prompt",
     "{text}"),
    ('[[guardrails]]\nname = "x"\nkind = "pii"\nwhatever = 1', "guardrails[0].whatever", "unknown key"),
    ('[[guardrails]]\nname = "x"\nkind = "pii"\n[[guardrails]]\nname = "x"\nkind = "pii"', "guardrails[1].name",
     "duplicate"),
])
def test_bad_guardrail_fails_at_start_naming_the_key(body, key, reason):
    with pytest.raises(ConfigError) as e:
        _load(body)
    assert e.value.file == "gw.toml" and e.value.key == key and reason in e.value.reason


def test_attached_names_must_be_defined():
    with pytest.raises(ConfigError) as e:
        _load("", server='guardrails = ["ghost"]')
    assert e.value.key == "server.guardrails[0]" and "undefined guardrail 'ghost'" in e.value.reason
    with pytest.raises(ConfigError) as e:
        _load("", alias='guardrails = ["ghost"]')
    assert e.value.key == "models[0].guardrails[0]"


def test_a_full_guardrail_config_loads():
    config = _load('[[guardrails]]\nname = "pii"\nkind = "pii"\nentities = ["email"]\nrestore = true\n'
                   '[[guardrails]]\nname = "inj"\nkind = "injection"\naction = "flag"\nthreshold = 0.7\n',
                   server='guardrails = ["inj"]', alias='guardrails = ["pii"]')
    g = config.guardrails["pii"]  # type: ignore[attr-defined]
    assert (g.kind, g.on, g.action, g.entities, g.restore) == ("pii", "input", "redact", ("email",), True)
    assert config.server.guardrails == ["inj"]  # type: ignore[attr-defined]
    assert config.models["m"].guardrails == ["pii"]  # type: ignore[attr-defined]
