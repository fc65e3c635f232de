"""The console end to end in a real browser: Playwright driving Debian's chromium headless against a
running gateway. Sign in, the catalog, a key created (its secret shown once), a streamed chat in the
playground, that session reopened, the dashboard and request log, the key revoked and refused, the audit
log; a screenshot of each page in the test's tmp_path, and every page at a phone's width."""

from __future__ import annotations

import base64
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import Running, base_config
from tests.fakes.paced_openai import WORDS
from tests.fakes.paced_openai import make_app as make_paced
from tests.servers import ServerThread

CHROMIUM = "/usr/bin/chromium"
ADMIN = "sk-admin-e2e"
ANSWER = "".join(WORDS)
PAGES = ["dashboard", "catalog", "keys", "requests", "audit", "playground"]


@pytest.fixture(scope="module")
def paced() -> Iterator[Running]:
    server = ServerThread(make_paced()).start()
    yield Running(server, None)
    server.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing (.ci/run installs it)")
        pytest.skip("chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def until(check: Callable[[], Any], what: str, timeout_s: float = 15, refresh: Callable[[], Any] | None = None) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
        if refresh is not None:
            refresh()


def test_the_console_end_to_end(browser, fake_openai, paced, make_gateway, tmp_path: Path):
    extra = f"""
[providers.paced]
kind = "openai"
base_url = "{paced.url}/v1"
api_key = "sk-paced"

[[models]]
name = "paced"
targets = [{{ provider = "paced", model = "paced-1", input_per_mtok = 1.0, output_per_mtok = 2.0 }}]
capabilities = ["streaming", "reasoning"]
"""
    text = base_config(fake_openai.url, tmp_path / "gw.db", extra).replace(
        "[server]\n", f'[server]\nadmin_key = "{ADMIN}"\n', 1)
    gw = make_gateway(text)
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    # Console errors fail the test, but for the refusals of the revoked key the test itself asks for.
    page.on("console", lambda m: problems.append(f"console: {m.text} {m.location['url']}")
            if m.type == "error" and "status of 401" not in m.text else None)
    shots = tmp_path / "screenshots"
    shots.mkdir()

    def shot(name: str) -> None:
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

    def nav(title: str) -> None:
        page.locator("#nav a", has_text=title).click()

    # sign in with the admin key
    page.goto(gw.url + "/ui")
    page.fill("input[name=key]", ADMIN)
    page.click("form.signin button[type=submit]")
    expect(page.locator("#nav")).to_contain_text("Audit log")
    expect(page.locator("#who")).to_have_text("admin")

    # the catalog lists every alias, with its health
    nav("Models")
    table = page.locator("#catalog")
    for alias in ("gpt-test", "echo", "paced", "a-ok"):
        expect(table).to_contain_text(alias)
    expect(table).to_contain_text("closed")
    page.fill("input[type=search]", "paced")
    expect(page.locator("#catalog tbody tr")).to_have_count(1)
    shot("catalog")

    # create a key: the secret is shown once
    nav("Keys")
    page.fill("#new-key input[name=name]", "e2e")
    page.fill("#new-key input[name=budget_usd]", "1")
    page.click("text=Create key")
    secret = page.locator(".secret").text_content() or ""
    assert re.fullmatch(r"sk-gw-[\w-]+", secret), secret
    expect(page.locator("#keys")).to_contain_text("e2e")
    shot("keys")
    page.reload()
    expect(page.locator("#keys")).to_contain_text("e2e")
    assert page.locator(".secret").count() == 0 and secret not in page.content()
    page.locator("#keys tbody tr", has_text="e2e").locator("text=Edit").click()
    page.fill("#edit-key input[name=rpm]", "50")
    page.click("#edit-key button[type=submit]")
    expect(page.locator("#keys tbody tr", has_text="e2e")).to_contain_text("rpm 50")

    # a streamed chat in the playground, with that key
    page.goto(gw.url + "/ui#/playground")
    page.fill("#play-key", secret)
    page.click("text=Use this key")
    page.select_option("#model", "paced")
    page.fill("#system", "Be brief.")
    page.fill("#prompt", "Count for me")
    page.click("#send")
    answer = page.locator(".msg.assistant .text").last
    seen = set()
    deadline = time.monotonic() + 20
    while page.locator(".msg.assistant.streaming").count() or not seen:
        assert time.monotonic() < deadline, "the stream did not finish"
        seen.add(answer.text_content() or "")
        time.sleep(0.05)
    partial = {s for s in seen if s and s != ANSWER}
    assert partial, f"no token arrived before the whole answer: {seen}"  # tokens arrived one by one
    expect(answer).to_have_text(ANSWER)
    expect(page.locator(".msg.assistant .reasoning").last).to_have_text("Thinking it over.")
    meta = page.locator(".msg.assistant .meta").last
    expect(meta).to_contain_text("tokens")
    expect(meta).to_contain_text("$")
    expect(meta).to_contain_text("paced")
    until(lambda: "#/playground/sess_" in page.url, "the session's URL")
    session_url = page.url
    shot("playground")

    # reload and reopen that session
    page.reload()
    expect(page.locator(".msg.user .text")).to_have_text(["Count for me"])
    expect(page.locator(".msg.assistant .text")).to_have_text([ANSWER])
    page.click("#new-chat")
    expect(page.locator(".msg")).to_have_count(0)
    page.locator("#sessions a", has_text="Count for me").click()
    expect(page.locator(".msg.assistant .text")).to_have_text([ANSWER])
    assert page.url == session_url

    # the dashboard and the request log show the request with its cost
    nav("Usage")
    until(lambda: "paced" in (page.locator("#breakdown").text_content() or ""), "the dashboard's row",
          refresh=page.reload)
    expect(page.locator(".cards")).to_contain_text("$0.0000")
    expect(page.locator(".chart canvas").first).to_be_visible()
    shot("dashboard")
    nav("Requests")
    row = page.locator("#requests tbody tr", has_text="paced")
    expect(row).to_contain_text("e2e")
    expect(row).to_contain_text("$0.0000")
    row.click()
    expect(page.locator("dl.detail")).to_contain_text("cost_usd")
    expect(page.locator("dl.detail")).to_contain_text("paced-1")
    shot("requests")

    # revoke the key and see it refused
    nav("Keys")
    revoke = page.locator("#keys tbody tr", has_text="e2e").locator("button.danger")
    revoke.click()
    expect(revoke).to_have_text("Confirm revoke")
    revoke.click()
    expect(page.locator("#keys tbody tr", has_text="e2e")).to_contain_text("revoked")
    with pytest.raises(openai.AuthenticationError):
        gw.client(secret).chat.completions.create(model="paced", messages=[{"role": "user", "content": "x"}])
    nav("Playground")
    expect(page.locator("[role=alert]")).to_contain_text("playground key was refused")

    # the audit log shows the creation and the revocation
    nav("Audit log")
    audit = page.locator("#audit tbody")
    expect(audit.locator("tr", has_text="key.created")).to_contain_text("e2e")
    expect(audit.locator("tr", has_text="key.revoked")).to_contain_text("e2e")
    expect(audit.locator("tr", has_text="key.updated")).to_contain_text('{"rpm":50}')  # what changed, only
    shot("audit")

    # every page at a phone's width: nothing wider than the screen
    page.set_viewport_size({"width": 390, "height": 844})
    for name in PAGES:
        page.goto(f"{gw.url}/ui#/{name}")
        page.wait_for_load_state("networkidle")
        expect(page.locator("main h1")).to_be_visible()
        width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"{name} overflows a phone's width: {width}"
        page.screenshot(path=str(shots / f"phone-{name}.png"), full_page=True)

    assert {p.name for p in shots.iterdir()} >= {f"{n}.png" for n in ("catalog", "keys", "playground", "dashboard",
                                                                        "requests", "audit")}
    assert not problems, problems
    context.close()


def test_a_gateway_key_sees_only_its_own_pages(browser, fake_openai, make_gateway, tmp_path: Path):
    from playwright.sync_api import expect

    from tests.conftest import GATEWAY_KEY

    text = base_config(fake_openai.url, tmp_path / "gw.db").replace("[server]\n", f'[server]\nadmin_key = "{ADMIN}"\n',
                                                                    1)
    gw = make_gateway(text)
    page = browser.new_page()
    page.goto(gw.url + "/ui")
    page.fill("input[name=key]", "sk-not-a-key")
    page.click("form.signin button[type=submit]")
    expect(page.locator("form.signin [role=alert]")).to_have_text("That key was not accepted.")
    page.fill("input[name=key]", GATEWAY_KEY)
    page.click("form.signin button[type=submit]")
    expect(page.locator("#who")).to_have_text("gateway key")
    nav = page.locator("#nav")
    expect(nav).to_contain_text("Playground")
    assert "Keys" not in (nav.text_content() or "") and "Audit" not in (nav.text_content() or "")
    page.goto(gw.url + "/ui#/catalog")
    expect(page.locator("#catalog")).to_contain_text("gpt-test")
    # model and user text is shown as text: markup in it stays inert
    page.goto(gw.url + "/ui#/playground")
    page.select_option("#model", "gpt-test")
    markup = '<img src=x onerror="window.pwned=1"><b>bold</b>'
    page.fill("#prompt", markup)
    page.click("#send")
    expect(page.locator(".msg.assistant .text")).to_have_text("Hello " + markup)
    expect(page.locator(".msg.user .text")).to_have_text(markup)
    assert page.locator(".messages b, .messages img").count() == 0
    assert page.evaluate("window.pwned") is None
    # an image attachment is kept with the session and comes back when it is reopened
    png = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJ"
                           "RU5ErkJggg==")
    page.set_input_files("#attach", files=[{"name": "dot.png", "mimeType": "image/png", "buffer": png}])
    expect(page.locator(".thumb")).to_have_count(1)
    page.fill("#prompt", "what is this")
    page.click("#send")
    expect(page.locator(".msg.assistant .text").last).to_have_text("Hello what is this")
    until(lambda: "#/playground/sess_" in page.url, "the session's URL")
    page.reload()
    image = page.locator(".msg.user img")
    expect(image).to_have_count(1)
    assert (image.get_attribute("src") or "").startswith("data:image/png;base64,")
    assert page.evaluate("document.querySelector('.msg.user img').naturalWidth") == 1
    # the key lives in sessionStorage: a new tab (another context) is signed out
    other = browser.new_page()
    other.goto(gw.url + "/ui")
    expect(other.locator("form.signin")).to_be_visible()
    # on a gateway without an admin key, a gateway key signs in all the same
    plain = make_gateway(base_config(fake_openai.url, tmp_path / "plain.db"))
    other.goto(plain.url + "/ui")
    other.fill("input[name=key]", GATEWAY_KEY)
    other.click("form.signin button[type=submit]")
    expect(other.locator("#who")).to_have_text("gateway key")
    expect(other.locator("#breakdown")).to_be_visible()
