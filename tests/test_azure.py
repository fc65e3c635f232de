"""kind = "azure": deployment URLs with api-version, the v1 style, the api-key header, and the
opening content-filter chunk that OpenAI clients must never see."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import storage_table
from tests.fakes.azure_server import API_KEY, FakeAzure
from tests.servers import ServerThread

MSGS = [{"role": "user", "content": "hello azure"}]


@pytest.fixture(scope="module")
def azure():
    fake = FakeAzure()
    server = ServerThread(fake).start()
    yield fake, server.url
    server.stop()


def config(url: str, tmp: Path, api_version: str, key: str = API_KEY) -> str:
    return f"""
{storage_table(tmp)}
[providers.az]
kind = "azure"
base_url = "{url}"
api_key = "{key}"
api_version = "{api_version}"

[[models]]
name = "gpt-az"
targets = [{{ provider = "az", model = "my-deployment" }}]

[[models]]
name = "emb-az"
targets = [{{ provider = "az", model = "emb-deployment" }}]

[[keys]]
name = "t"
key = "sk-t"
"""


@pytest.mark.parametrize("api_version,path", [("2024-10-21", "/openai/deployments/my-deployment/chat/completions"
                                                              "?api-version=2024-10-21"),
                                              ("", "/openai/v1/chat/completions")])
def test_chat_and_stream_through_azure(make_gateway, azure, tmp_path, api_version, path):
    fake, url = azure
    client = make_gateway(config(url, tmp_path, api_version)).client(key="sk-t")
    full = client.chat.completions.create(model="gpt-az", messages=MSGS)
    assert fake.paths[-1] == path
    assert full.model == "gpt-az" and full.choices[0].message.content == "Hello hello azure"
    headers = fake.state.last()["headers"]
    assert headers["api-key"] == API_KEY and "authorization" not in headers

    chunks = list(client.chat.completions.create(model="gpt-az", messages=MSGS, stream=True,
                                                 stream_options={"include_usage": True}))
    # the content-filter chunk is gone: every chunk but the usage one has a choice
    assert all(c.choices for c in chunks[:-1]) and chunks[-1].usage is not None
    assert all(c.model == "gpt-az" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full.choices[0].message.content


def test_embeddings_through_azure(make_gateway, azure, tmp_path):
    fake, url = azure
    client = make_gateway(config(url, tmp_path, "2024-10-21")).client(key="sk-t")
    out = client.embeddings.create(model="emb-az", input="abc", dimensions=3)
    assert fake.paths[-1] == "/openai/deployments/emb-deployment/embeddings?api-version=2024-10-21"
    assert len(out.data[0].embedding) == 3 and out.model == "emb-az"


def test_wrong_azure_key_is_502_without_the_key(make_gateway, azure, tmp_path):
    import openai
    _, url = azure
    client = make_gateway(config(url, tmp_path, "2024-10-21", key="wrong-key")).client(key="sk-t")
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="gpt-az", messages=MSGS)
    assert "wrong-key" not in str(e.value.body)


@pytest.mark.parametrize("api_version,path", [("2024-10-21", "/openai/deployments/my-deployment/completions"
                                                              "?api-version=2024-10-21"),
                                              ("", "/openai/v1/completions")])
def test_legacy_completions_through_azure(make_gateway, azure, tmp_path, api_version, path):
    fake, url = azure
    client = make_gateway(config(url, tmp_path, api_version)).client(key="sk-t")
    out = client.completions.create(model="gpt-az", prompt="hello azure")
    assert fake.paths[-1] == path and out.model == "gpt-az" and out.choices[0].text == "Hello hello azure"
    chunks = list(client.completions.create(model="gpt-az", prompt="hello azure", stream=True))
    assert all(c.choices for c in chunks)  # Azure's content-filter opening chunk is not passed on
    assert "".join(c.choices[0].text for c in chunks) == "Hello hello azure"
