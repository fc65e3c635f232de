"""One client process of `make scale`: mixed chat, stream and embeddings traffic through the official
OpenAI SDK, spread over the gateways, paced at a fixed rate; one JSON line per request to ``--out``.

Run by tests/bench/scale.py as ``python -m tests.bench.scale_client --spec JSON --out FILE``. The spec:
``{"name": "c0", "gateways": [url, ...], "keys": [secret, ...], "rps": 20, "threads": 4, "duration_s": 20,
"models": {"chat": alias, "stream": alias, "embed": alias}}``. Each request carries
``x-request-id: <name>-<thread>-<n>``, the prefix of its usage row's request_id, so the driver can match
answers to rows one by one. The clients of a phase start sending together: each writes ``<out>.ready``
once imported and waits for the driver's ``<out>.go``, which holds the moment to start.

An outcome is ``answered`` (an HTTP status; a stream only once it reached its end), ``refused`` (the
connection was refused: the gateway was down, the request never reached it) or ``dropped`` (the connection
broke after the request was sent: the killed gateway's in-flight requests).
"""

from __future__ import annotations

import argparse
import itertools
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson

KINDS = ("chat", "stream", "chat", "embed", "stream")  # the mix each thread cycles through
MESSAGES = [{"role": "user", "content": "hello there friend"}]
MAX_TOKENS = 16


def _connect_refused(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, (httpx.ConnectError, ConnectionRefusedError)):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def one_request(client: openai.OpenAI, kind: str, models: dict[str, str], rid: str) -> dict[str, Any]:
    """Send one request; its outcome, status and, for an answer, its usage as the client saw it."""
    headers = {"x-request-id": rid}
    out: dict[str, Any] = {"outcome": "answered", "status": None, "tokens": None, "error": None}
    try:
        if kind == "embed":
            raw = client.embeddings.with_raw_response.create(model=models["embed"], input=["hello there friend"],
                                                             extra_headers=headers)
            out["status"] = raw.status_code
            out["tokens"] = raw.parse().usage.total_tokens
        elif kind == "chat":
            raw = client.chat.completions.with_raw_response.create(
                model=models["chat"], messages=MESSAGES, max_tokens=MAX_TOKENS, extra_headers=headers)
            out["status"] = raw.status_code
            usage = raw.parse().usage
            out["tokens"] = usage.total_tokens if usage else None
        else:
            with client.chat.completions.with_streaming_response.create(
                    model=models["stream"], messages=MESSAGES, max_tokens=MAX_TOKENS, stream=True,
                    stream_options={"include_usage": True}, extra_headers=headers) as raw:
                out["status"] = raw.status_code
                done = False
                for line in raw.iter_lines():
                    if line.startswith("data: {") and '"error"' in line[:20]:
                        out["error"] = line[6:200]
                    elif line.startswith("data: {") and '"usage":{' in line.replace(" ", ""):
                        out["tokens"] = orjson.loads(line[6:])["usage"]["total_tokens"]
                    elif line == "data: [DONE]":
                        done = True
                if not done and out["error"] is None:
                    out["outcome"], out["error"] = "dropped", "stream ended without [DONE]"
    except openai.APIStatusError as e:
        out["status"] = e.status_code
        out["error"] = str(e)[:200]
    except (openai.APIConnectionError, httpx.HTTPError, OSError) as e:
        out["outcome"] = "refused" if _connect_refused(e) else "dropped"
        out["error"] = f"{type(e).__name__}: {e}"[:200]
    return out


def start_signal(out_path: Path) -> float:
    """Say this process is ready, then wait for the driver's start time (epoch seconds)."""
    Path(f"{out_path}.ready").touch()
    go = Path(f"{out_path}.go")
    deadline = time.monotonic() + 180
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit("no start signal from the driver")
        time.sleep(0.01)
    time.sleep(0.01)  # the driver writes a few bytes: let the write finish
    return float(go.read_text())


def run(spec: dict[str, Any], out_path: Path) -> None:
    gateways, keys, models = spec["gateways"], spec["keys"], spec["models"]
    threads, duration = spec["threads"], spec["duration_s"]
    interval = threads / spec["rps"]  # each thread's pace: together they make rps
    lock = threading.Lock()
    results: list[bytes] = []
    late = time.time() - start_signal(out_path)
    if late > 0:
        print(f"client {spec['name']} ready {late:.2f} s after the agreed start", flush=True)
    start = time.monotonic() - late  # the agreed moment, on this process's monotonic clock
    if late < 0:
        time.sleep(-late)
    end = start + duration

    def worker(t: int) -> None:
        clients: dict[tuple[str, str], openai.OpenAI] = {}
        picks = itertools.count(t)
        next_at = start + interval * t / threads
        for n in itertools.count():
            now = time.monotonic()
            if now >= end:
                return
            if next_at > now:
                time.sleep(next_at - now)
            next_at += interval
            i = next(picks)
            gateway, key, kind = gateways[i % len(gateways)], keys[n % len(keys)], KINDS[(n // len(keys)) % len(KINDS)]
            client = clients.get((gateway, key))
            if client is None:
                client = clients[(gateway, key)] = openai.OpenAI(base_url=gateway + "/v1", api_key=key,
                                                                 max_retries=0, timeout=15)
            rid = f"{spec['name']}-{t}-{n}"
            sent = time.time()
            result = one_request(client, kind, models, rid)
            result.update(id=rid, key=key, kind=kind, gateway=gateway, sent=sent, ended=time.time())
            with lock:
                results.append(orjson.dumps(result))

    pool = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    out_path.write_bytes(b"\n".join(results) + b"\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="the client's spec as JSON")
    parser.add_argument("--out", required=True, type=Path, help="where its JSON lines go")
    args = parser.parse_args()
    run(orjson.loads(args.spec), args.out)


if __name__ == "__main__":
    main()
