"""The wheel is the deliverable: built from a copy of the sources, installed in a fresh venv and run from
outside the repository, it serves a chat answer with Redis limits (its Lua scripts inside the package).
And the Dockerfile that ships it is checked by what it is made of (no container runtime runs here)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx
import pytest

from proxy.cli import build_parser
from tests.redis_util import RedisServer
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
# What the Dockerfile's build stage copies: the wheel is made from exactly these.
SOURCES = ["pyproject.toml", "README.md", "proxy", "adapters"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the wheel; its dependencies come from this venv's site-packages through
    a .pth line (offline and fast). Path lines are not site dirs, so this venv's editable install of the
    checkout is not seen: `proxy` can only be the wheel's."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # built from a copy: setuptools writes build/ and *.egg-info next to its sources
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    dist = tmp / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist),
                    str(src)], check=True, capture_output=True, timeout=120)
    wheels = list(dist.glob("llm_gateway-*.whl"))
    assert len(wheels) == 1, wheels
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheels[0])],
                   check=True, capture_output=True, timeout=120)
    Path(purelib, "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def test_wheel_carries_the_lua_scripts_and_no_checkout(installed):
    out = subprocess.run([str(installed / "bin" / "python"), "-c",
                          "import proxy, proxy.limits, pathlib; p = pathlib.Path(proxy.limits.__file__).parent; "
                          "print(proxy.__file__); print(sorted(f.name for f in p.glob('*.lua')))"],
                         cwd=installed, check=True, capture_output=True, text=True).stdout.splitlines()
    assert out[0].startswith(str(installed)), out  # the wheel's copy, not the repository's
    assert out[1] == str(["acquire.lua", "release.lua", "renew.lua", "settle.lua"])


def test_wheel_carries_every_console_file(installed):
    """The console at /ui is served from the package: every file of the checkout's static/ is in the wheel."""
    static = ROOT / "proxy" / "console" / "static"
    expected = sorted(str(p.relative_to(static)) for p in static.rglob("*") if p.is_file())
    out = subprocess.run([str(installed / "bin" / "python"), "-c",
                          "import proxy.console.ui as ui, pathlib; s = ui.STATIC; print(s); "
                          "print(sorted(str(p.relative_to(s)) for p in s.rglob('*') if p.is_file()))"],
                         cwd=installed, check=True, capture_output=True, text=True).stdout.splitlines()
    assert out[0].startswith(str(installed)), out
    assert out[1] == str(expected)
    assert {"index.html", "app.js", "vendor/uPlot.esm.js", "pages/playground.js"} <= set(expected)


def test_wheel_carries_the_default_price_table(installed):
    code = ("import proxy.prices as p; print(p.DEFAULT_PRICES); t = p.default_prices(); "
            "print(t['openai/gpt-4o-mini']['input_per_mtok'], len(t) > 40)")
    out = subprocess.run([str(installed / "bin" / "python"), "-c", code], cwd=installed, check=True,
                         capture_output=True, text=True).stdout.splitlines()
    assert out[0].startswith(str(installed)) and out[0].endswith("proxy/data/prices.json"), out
    assert out[1] == "0.15 True"


def test_installed_gateway_serves_chat_with_redis_limits(installed, tmp_path):
    redis = RedisServer().start()
    run = tmp_path / "run"  # the cwd: outside the repository, where relative ledger paths land
    run.mkdir()
    config = tmp_path / "gw.toml"
    config.write_text(f"""
[storage]
database_url = "sqlite:///{tmp_path / 'usage.db'}"
redis_url = "{redis.url}"

[providers.local]
kind = "echo"

[[models]]
name = "echo"
targets = [{{ provider = "local", model = "echo-1" }}]

[[keys]]
name = "dev"
key = "sk-pkg"
rpm = 2
""")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_") and k != "PYTHONPATH"}
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(installed / "bin" / "gateway"), "serve", "--config", str(config),
                                 "--port", str(port)], cwd=run, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)
        headers = {"authorization": "Bearer sk-pkg"}
        body = {"model": "echo", "messages": [{"role": "user", "content": "hello from the wheel"}]}
        statuses = []
        for _ in range(3):
            r = httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=10)
            statuses.append(r.status_code)
            if r.status_code == 200:
                assert "hello from the wheel" in r.json()["choices"][0]["message"]["content"]
        assert statuses == [200, 200, 429], statuses  # rpm = 2, counted in Redis by the packaged scripts
        import redis as redis_py

        assert redis_py.Redis.from_url(redis.url).dbsize() > 0
        page = httpx.get(url + "/ui/app.js", timeout=10)  # the console, from the installed package's files
        assert page.status_code == 200 and "auth" in page.text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        redis.stop()
    # uvicorn re-raises the SIGTERM it handled once drained: the exit code says "terminated", the log "clean".
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text(errors="replace")
    assert "Application shutdown complete" in log.read_text(errors="replace")


# --- the Dockerfile, statically ------------------------------------------------------------------

def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_copies_only_what_exists_and_is_not_ignored():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    copies = [args.split() for word, args in dockerfile() if word == "COPY"]
    assert copies
    for parts in copies:
        if parts[0].startswith("--from="):
            continue
        for source in parts[:-1]:
            assert (ROOT / source).exists(), source
            assert source not in ignored and source.split("/")[0] not in ignored, source
    assert {s for p in copies if not p[0].startswith("--") for s in p[:-1]} >= {*SOURCES, "gateway.toml"}
    for must in (".venv", ".git", "*.db", "tests", "usage-spill"):
        assert must in ignored, must


def test_dockerfile_stages_user_entrypoint_and_healthcheck():
    steps = dockerfile()
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) == 2 and all(f.split()[0].endswith("-slim") for f in froms), froms
    runtime = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM"):]
    runs = " ".join(args for word, args in runtime if word == "RUN")
    assert "pip install /wheels/" in runs and "-e " not in runs  # the wheel, never an editable checkout
    assert "pip wheel" in " ".join(args for word, args in steps[:len(steps) - len(runtime)] if word == "RUN")
    assert not any(word == "COPY" and args.split()[0] in SOURCES for word, args in runtime)  # no sources
    users = [args for word, args in runtime if word == "USER"]
    assert users and users[-1] not in ("root", "0") and not users[-1].startswith("0:")
    health = [args for word, args in runtime if word == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0] and "urllib" in health[0]
    assert ("STOPSIGNAL", "SIGTERM") in runtime
    assert any(word == "EXPOSE" and args == "8080" for word, args in runtime)
    env = " ".join(args for word, args in runtime if word == "ENV")
    for var in ("GATEWAY_CONFIG=/etc/llm-gateway/gateway.toml", "GATEWAY_HOST=0.0.0.0", "GATEWAY_PORT=8080",
                "GATEWAY_WORKERS="):
        assert var in env, var
    # ENTRYPOINT + CMD is a real `gateway` subcommand the parser accepts.
    entry = json.loads(next(args for word, args in runtime if word == "ENTRYPOINT"))
    cmd = json.loads(next(args for word, args in runtime if word == "CMD"))
    assert entry == ["gateway"]
    args = build_parser().parse_args(cmd)
    assert args.command == "serve"
