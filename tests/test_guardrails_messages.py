"""Guardrails on /v1/messages through the Anthropic SDK: a target that speaks Messages gets the client's own
body, so it must be redacted too, and the Anthropic-shaped answer gets the originals back."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import pytest

from tests.conftest import GATEWAY_KEY, Running, start_gateway
from tests.fakes.anthropic_server import make_app as make_fake_anthropic
from tests.servers import ServerThread

ANTHROPIC_KEY = "sk-ant-guard-upstream"
EMAIL = "jane.roe@example.com"


@pytest.fixture(scope="module")
def claude() -> Iterator[Running]:
    app = make_fake_anthropic(ANTHROPIC_KEY)
    server = ServerThread(app).start()
    yield Running(server, app)
    server.stop()


@pytest.fixture(scope="module")
def gw(claude: Running, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("guard-messages")
    running = start_gateway(f"""
[storage]
database_url = "sqlite:///{tmp / "gw.db"}"
spill_dir = "{tmp / "spill"}"

[providers.claude]
kind = "anthropic"
base_url = "{claude.url}"
api_key = "{ANTHROPIC_KEY}"

[[guardrails]]
name = "pii"
kind = "pii"
restore = true

[[models]]
name = "guarded-claude"
guardrails = ["pii"]
targets = [{{ provider = "claude", model = "claude-ok" }}]

[[keys]]
name = "team"
key = "{GATEWAY_KEY}"
""")
    yield running
    running.server.stop()


def test_passthrough_body_is_redacted_and_the_answer_restored(gw, claude):
    client = anthropic.Anthropic(base_url=gw.url, api_key=GATEWAY_KEY, max_retries=0)
    message = client.messages.create(model="guarded-claude", max_tokens=50, system=f"The user is {EMAIL}.",
                                     messages=[{"role": "user", "content": [{"type": "text",
                                                                             "text": f"mail {EMAIL} now"}]}])
    sent = claude.app.state.fake.requests[-1]["body"]
    assert EMAIL not in str(sent)
    assert sent["messages"][-1]["content"][0]["text"] == "mail [EMAIL_1] now"
    assert sent["system"] == "The user is [EMAIL_1]."
    assert message.content[0].text == f"Hello mail {EMAIL} now"
