"""The emulated backend over real loopback sockets: OpenAI API formats, errors, queue policy,
cancellation, time scale, many concurrent streams, and the subprocess runner."""

from __future__ import annotations

import asyncio
import json
import os

import httpx
import pytest

from quicgw.backends import BackendProcess, EmulatedBackend
from quicgw.backends.openai_api import filler_text
from quicgw.core.catalog import latency_model
from quicgw.core.tokens import (
    estimate_chat_tokens,
    estimate_prompt_tokens,
    estimate_tokens,
)

pytestmark = pytest.mark.timeout(60)

MODEL, GPU = "llama-3.1-8b", "a100-80gb"


def chat_body(tokens: int | str = 5, **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}],
            "max_tokens": tokens, **extra}


async def sse_events(resp: httpx.Response) -> list:
    """The data payloads of a server-sent-event stream, JSON-decoded ([DONE] kept as a str)."""
    events = []
    async for line in resp.aiter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
        else:
            assert line == "", f"unexpected SSE line {line!r}"
    return events


async def load(client: httpx.AsyncClient, url: str) -> dict:
    return (await client.get(f"{url}/load")).json()


async def wait_for(predicate, client, url, timeout_s: float = 10.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        state = await load(client, url)
        if predicate(state):
            return state
        assert asyncio.get_running_loop().time() < deadline, f"timed out; load is {state}"
        await asyncio.sleep(0.01)


# -- token estimate --------------------------------------------------------------------------
def test_token_estimate_rule():
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert estimate_prompt_tokens([1, 2, 3]) == 3
    assert estimate_prompt_tokens("x" * 2048) == 512
    # 5 per conversation + (5 + text) per message
    msgs = [{"role": "system", "content": "abcd"},
            {"role": "user", "content": [{"type": "text", "text": "abcdefgh"}]}]
    assert estimate_chat_tokens(msgs) == 5 + (5 + 1) + (5 + 2)
    # The generated filler round-trips: n tokens of reply estimate back to n.
    assert all(estimate_tokens(filler_text(n)) == n for n in (0, 1, 7, 1024))


# -- formats -----------------------------------------------------------------------------------
async def test_chat_non_streaming_and_timings():
    async with EmulatedBackend(MODEL, GPU, time_scale=20) as b, httpx.AsyncClient() as c:
        r = await c.post(f"{b.url}/v1/chat/completions", json=chat_body(7))
        assert r.status_code == 200
        body = r.json()
        assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
        assert body["model"] == MODEL
        choice = body["choices"][0]
        assert choice["message"] == {"role": "assistant", "content": filler_text(7)}
        assert choice["finish_reason"] == "length"
        prompt = estimate_chat_tokens([{"content": "hello there"}])
        assert body["usage"] == {"prompt_tokens": prompt, "completion_tokens": 7,
                                 "total_tokens": prompt + 7}
        t = body["quicgw_timings"]
        assert t["time_scale"] == 20 and r.headers["x-time-scale"] == "20"
        assert t["queue_ms"] == pytest.approx(0.0, abs=1e-6)
        assert 0 < t["ttft_ms"] < t["e2el_ms"]
        assert float(r.headers["x-e2el-ms"]) == pytest.approx(t["e2el_ms"], abs=1e-3)
        # max_completion_tokens wins over max_tokens, and the default applies when neither is set
        r = await c.post(f"{b.url}/v1/chat/completions",
                         json=chat_body(3, max_completion_tokens=2))
        assert r.json()["usage"]["completion_tokens"] == 2
    async with EmulatedBackend(MODEL, GPU, time_scale=50, default_max_tokens=4) as b, \
            httpx.AsyncClient() as c:
        body = {"messages": [{"role": "user", "content": "hi"}]}  # no model: the served one
        r = await c.post(f"{b.url}/v1/chat/completions", json=body)
        assert r.json()["usage"]["completion_tokens"] == 4


async def test_chat_streaming_format():
    async with EmulatedBackend(MODEL, GPU, time_scale=20) as b, httpx.AsyncClient() as c:
        body = chat_body(6, stream=True, stream_options={"include_usage": True})
        async with c.stream("POST", f"{b.url}/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            events = await sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
    assert len({ch["id"] for ch in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    tokens = chunks[1:-1]
    assert len(tokens) == 6  # one chunk per token
    assert "".join(ch["choices"][0]["delta"]["content"] for ch in tokens) == filler_text(6)
    assert [ch["choices"][0]["finish_reason"] for ch in tokens] == [None] * 5 + ["length"]
    assert all(ch["usage"] is None for ch in chunks[:-1])
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 6
    assert tokens[-1]["quicgw_timings"] == usage_chunk["quicgw_timings"]
    assert usage_chunk["quicgw_timings"]["ttft_ms"] > 0


async def test_completions_streaming_and_not():
    async with EmulatedBackend(MODEL, GPU, time_scale=20, served_model_name="my-llama") as b, \
            httpx.AsyncClient() as c:
        body = {"model": "medium", "prompt": "x" * 400, "max_tokens": 4}  # size alias accepted
        r = await c.post(f"{b.url}/v1/completions", json=body)
        out = r.json()
        assert out["object"] == "text_completion" and out["model"] == "my-llama"
        assert out["choices"][0]["text"] == filler_text(4)
        assert out["usage"]["prompt_tokens"] == 100
        body = {"model": "my-llama", "prompt": [1, 2, 3], "max_tokens": 3, "stream": True}
        async with c.stream("POST", f"{b.url}/v1/completions", json=body) as r:
            events = await sse_events(r)
        assert events[-1] == "[DONE]"
        assert [e["choices"][0]["text"] for e in events[:-1]] == [" the", " fox", " ran"]
        assert events[-2]["choices"][0]["finish_reason"] == "length"
        assert "usage" not in events[0]  # only with stream_options.include_usage


async def test_models_health_load_metrics():
    async with EmulatedBackend("small", "h100-80gb", max_batch=8, queue_policy="priority",
                               time_scale=3) as b, httpx.AsyncClient() as c:
        r = await c.get(f"{b.url}/v1/models")
        (entry,) = r.json()["data"]
        assert entry["id"] == "llama-3.2-1b" and entry["object"] == "model"
        assert (await c.get(f"{b.url}/health")).status_code == 200
        state = await load(c, b.url)
        assert state["running"] == 0 and state["waiting"] == 0 and state["max_batch"] == 8
        assert state["queue_policy"] == "priority" and state["time_scale"] == 3
        metrics = (await c.get(f"{b.url}/metrics")).text
        assert 'vllm:num_requests_running{model_name="llama-3.2-1b"} 0.0' in metrics
        assert 'vllm:num_requests_waiting{model_name="llama-3.2-1b"} 0.0' in metrics


# -- errors ----------------------------------------------------------------------------------
async def test_errors_are_openai_style_and_server_keeps_serving():
    async with EmulatedBackend(MODEL, GPU, time_scale=50) as b, httpx.AsyncClient() as c:
        chat = f"{b.url}/v1/chat/completions"

        async def error(resp: httpx.Response, status: int) -> dict:
            assert resp.status_code == status, resp.text
            err = resp.json()["error"]
            assert {"message", "type", "code"} <= err.keys()
            return err

        err = await error(await c.post(chat, content=b"{not json"), 400)
        assert "not valid JSON" in err["message"]
        err = await error(await c.post(chat, json=chat_body("5")), 400)
        assert err["message"].startswith("max_tokens:")
        err = await error(await c.post(chat, json={"model": MODEL, "messages": []}), 400)
        assert "messages" in err["message"]
        bad = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
        err = await error(await c.post(chat, json={"messages": [bad]}), 400)
        assert "text" in err["message"]
        err = await error(await c.post(chat, json=chat_body(n=2)), 400)
        assert "n=1" in err["message"]
        err = await error(await c.post(chat, json=chat_body(1_000_000)), 400)
        assert err["code"] == "context_length_exceeded"
        err = await error(await c.post(f"{b.url}/v1/completions", json={"prompt": ["a", "b"]}), 400)
        assert "prompt" in err["message"]
        err = await error(await c.post(chat, json={**chat_body(), "model": "gpt-4"}), 404)
        assert err["code"] == "model_not_found" and MODEL in err["message"]
        await error(await c.get(f"{b.url}/v2/nothing"), 404)
        await error(await c.get(chat), 405)
        # Malformed HTTP on a raw socket: a 400, then the connection closes.
        reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert raw.startswith(b"HTTP/1.1 400")
        # ... and everyone else is still served.
        r = await c.post(chat, json=chat_body(2))
        assert r.status_code == 200
        assert (await load(c, b.url))["rejected"] == 10


async def test_pipelined_requests_on_one_connection():
    async with EmulatedBackend(MODEL, GPU, time_scale=50) as b:
        reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
        body = json.dumps({"prompt": "abcd", "max_tokens": 2}).encode()
        req = (b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
               b"content-length: %d\r\n\r\n%s" % (len(body), body))
        writer.write(req + req + b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert raw.count(b"HTTP/1.1 200 OK") == 3
        assert raw.count(b'"text":" the fox"') == 2
        # A client that waits for 100 Continue before sending its body (curl does) is answered.
        reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
        writer.write(req.replace(b"\r\n\r\n", b"\r\nexpect: 100-continue\r\n\r\n", 1)
                     .split(b"\r\n\r\n")[0] + b"\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(
            b"HTTP/1.1 100")
        writer.write(body)
        assert b'"text":" the fox"' in await asyncio.wait_for(reader.readuntil(b"}}"), 10)
        writer.close()


# -- scheduling ------------------------------------------------------------------------------
async def _finish_order(policy: str) -> list[str]:
    # max_batch 1: a blocker runs; a priority-5 then a priority-0 request queue behind it.
    async with EmulatedBackend(MODEL, GPU, max_batch=1, queue_policy=policy,
                               time_scale=5) as b, httpx.AsyncClient(timeout=30) as c:
        order: list[str] = []

        async def send(name: str, priority: int, n: int) -> None:
            r = await c.post(f"{b.url}/v1/completions",
                             json={"prompt": "abcd", "max_tokens": n, "priority": priority})
            assert r.status_code == 200
            order.append(name)

        # ~2 s of wall time: ample to queue the other two behind it even on a busy machine
        blocker = asyncio.create_task(send("blocker", 9, 1000))
        await wait_for(lambda s: s["running"] == 1, c, b.url)
        low = asyncio.create_task(send("priority-5", 5, 3))
        await wait_for(lambda s: s["waiting"] == 1, c, b.url)
        high = asyncio.create_task(send("priority-0", 0, 3))
        state = await wait_for(lambda s: s["waiting"] == 2, c, b.url)
        assert state["running"] == 1  # both queued while the blocker still runs
        await asyncio.gather(blocker, low, high)
        return order


async def test_priority_policy_serves_lower_value_first():
    assert await _finish_order("priority") == ["blocker", "priority-0", "priority-5"]


async def test_fcfs_policy_ignores_priority():
    assert await _finish_order("fcfs") == ["blocker", "priority-5", "priority-0"]


async def test_client_disconnect_cancels_and_frees_the_slot():
    async with EmulatedBackend(MODEL, GPU, max_batch=1, time_scale=10) as b, \
            httpx.AsyncClient(timeout=30) as c:
        reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
        body = json.dumps(chat_body(100_000, stream=True)).encode()  # ~17 minutes of decoding
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(body), body))
        head = await asyncio.wait_for(reader.readuntil(b'"content":" the"'), 10)
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert (await load(c, b.url))["running"] == 1
        writer.close()
        state = await wait_for(lambda s: s["running"] == 0, c, b.url)
        assert state["cancelled"] == 1 and state["waiting"] == 0
        # The slot is free: the next request is admitted at once.
        r = await c.post(f"{b.url}/v1/chat/completions", json=chat_body(2))
        assert r.json()["quicgw_timings"]["queue_ms"] == pytest.approx(0.0, abs=1e-6)


async def test_time_scale_compresses_wall_time_not_model_time():
    lm = latency_model(MODEL, GPU)
    n_in, n_out = 100, 100
    expected_model_ms = lm.isolated_latency_s(n_in, n_out) * 1000  # ~1.04 s of model time
    for scale in (4.0, 40.0):
        async with EmulatedBackend(MODEL, GPU, time_scale=scale) as b, httpx.AsyncClient() as c:
            loop = asyncio.get_running_loop()
            start = loop.time()
            r = await c.post(f"{b.url}/v1/completions",
                             json={"prompt": [7] * n_in, "max_tokens": n_out})
            wall_s = loop.time() - start
        t = r.json()["quicgw_timings"]
        assert t["time_scale"] == scale
        # The engine clock follows the latency model exactly, whatever the scale ...
        assert t["e2el_ms"] == pytest.approx(expected_model_ms, rel=1e-6)
        assert t["ttft_ms"] == pytest.approx((lm.prefill_s(n_in) + lm.decode_step_s(1)) * 1000,
                                             rel=1e-6)
        # ... and the wall clock runs `scale` times faster.
        assert expected_model_ms / 1000 / scale * 0.95 <= wall_s <= expected_model_ms / 1000 / scale + 2.0


async def test_many_concurrent_streams():
    # 1,000 streaming connections at once, each asking for 4 tokens, 250 running at a time.
    n = 1000
    async with EmulatedBackend(MODEL, GPU, max_batch=250, time_scale=20) as b:
        body = json.dumps(chat_body(4, stream=True)).encode()
        req = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
               b"content-length: %d\r\n\r\n%s" % (len(body), body))
        opened = asyncio.Event()
        n_open = 0

        async def one() -> bytes:
            nonlocal n_open
            reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
            n_open += 1
            if n_open == n:
                opened.set()
            await opened.wait()  # all connections are open before any request is sent
            writer.write(req)
            data = await reader.read()
            writer.close()
            return data

        results = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), 30)
        assert all(b"data: [DONE]\n\n" in r and r.endswith(b"\r\n0\r\n\r\n") for r in results), \
            results[0][-200:]
        state = b.load()
        assert state["completed"] == n and state["generated_tokens"] == 4 * n


# -- subprocess ------------------------------------------------------------------------------
async def test_backend_process_starts_serves_and_stops():
    proc = BackendProcess("small", GPU, time_scale=10, served_model_name="tiny")
    async with proc, httpx.AsyncClient() as c:
        pid = proc.pid
        assert proc.url.startswith("http://127.0.0.1:") and proc.port > 0
        r = await c.get(f"{proc.url}/v1/models")
        assert r.json()["data"][0]["id"] == "tiny"
        r = await c.post(f"{proc.url}/v1/completions", json={"prompt": "hi", "max_tokens": 3})
        assert r.json()["usage"]["completion_tokens"] == 3
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone (and reaped)


def test_backend_process_reports_bad_arguments():
    with pytest.raises(RuntimeError, match="exited with code 2"):
        BackendProcess("no-such-model", GPU, stderr=-3).start()  # -3: subprocess.DEVNULL


def test_in_process_constructor_validates():
    with pytest.raises(ValueError, match="unknown model"):
        EmulatedBackend("no-such-model")
    with pytest.raises(ValueError, match="queue policy"):
        EmulatedBackend(MODEL, queue_policy="lifo")
    with pytest.raises(ValueError, match="time_scale"):
        EmulatedBackend(MODEL, time_scale=0)
