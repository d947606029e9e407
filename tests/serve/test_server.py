"""The OpenAI-compatible server against a tiny model on CPU: the `openai` client (streaming and not), 4xx for
malformed requests, and a failing request that does not disturb concurrent ones."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
import torch

# The server's dependencies and the client used here; a bare GPU image may lack them (the test skips).
openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("pydantic")

import temoe  # noqa: E402
from temoe.serve.engine import OffloadEngine, make_policy  # noqa: E402
from temoe.serve.server import App, Job, start_background  # noqa: E402
from temoe.testing import char_tokenizer, tiny_model  # noqa: E402

MODEL = "tiny-random:gpt_oss"


@pytest.fixture(scope="module")
def served():
    model = tiny_model("gpt_oss")
    tok = char_tokenizer()
    handle = temoe.wrap(model)
    L, N = handle.num_layers, handle.num_experts
    mask = torch.zeros(L, N, dtype=torch.bool)
    mask[:, [0, 2, 3, 5]] = True
    # Reference: the plain model under the same routing, greedy.
    ids = tok("Hello there", return_tensors="pt").input_ids
    with torch.no_grad(), handle.restrict(mask):
        out = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    reference = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    engine = OffloadEngine(handle, make_policy("option", L, N, expert_budget=8))
    app = App(engine, tok, MODEL, static_masks=mask, max_queue=4, max_tokens_limit=64)
    server, thread, port = start_background(app.starlette)
    yield {"app": app, "base": f"http://127.0.0.1:{port}/v1", "reference": reference}
    server.should_exit = True
    thread.join(timeout=30)
    engine.detach()


def _client(served):
    return openai.OpenAI(base_url=served["base"], api_key="unused", timeout=60, max_retries=0)


def test_openai_client_completions_and_chat(served):
    client = _client(served)
    assert [m.id for m in client.models.list().data] == [MODEL]
    done = client.completions.create(model=MODEL, prompt="Hello there", max_tokens=6, temperature=0)
    assert done.choices[0].finish_reason in ("length", "stop")
    # greedy offloaded serving == plain model under the same routing (unless EOS came first)
    assert served["reference"].startswith(done.choices[0].text)
    assert done.usage.prompt_tokens == 11 and 1 <= done.usage.completion_tokens <= 6
    pieces = [c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="Hello there", max_tokens=6, temperature=0, stream=True)]
    assert "".join(pieces) == done.choices[0].text
    messages = [{"role": "user", "content": "Hi!"}]
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=5, temperature=0)
    assert chat.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=5, temperature=0,
                                            stream=True)
    deltas = [c.choices[0].delta.content or "" for c in stream]
    assert "".join(deltas) == chat.choices[0].message.content


X = {"model": MODEL, "prompt": "x"}


@pytest.mark.parametrize("path,body,status,fragment", [
    ("/completions", b"{not json", 400, "not valid JSON"),
    ("/completions", b"[1, 2]", 400, "JSON object"),
    ("/completions", {"model": MODEL}, 400, "missing required field 'prompt'"),
    ("/completions", {**X, "max_tokens": "ten"}, 400, "must be an integer"),
    ("/completions", {**X, "max_tokens": 0}, 400, "max_tokens=0: must be an integer in [1, 64]"),
    ("/completions", {**X, "temperature": 9}, 400, "temperature=9.0: must be a finite number in [0, 2]"),
    ("/completions", json.dumps({**X, "temperature": float("nan")}).encode(), 400, "temperature=nan"),
    ("/completions", {**X, "top_p": 0}, 400, "top_p=0.0: must be a finite number in (0, 1]"),
    ("/completions", {**X, "seed": 10**23}, 400, "seed=100000000000000000000000: must be"),
    ("/completions", {**X, "seed": 1e23}, 400, "field 'seed' must be an integer"),
    ("/completions", {**X, "seed": -1}, 400, "seed=-1: must be an integer in [0, "),
    ("/completions", {**X, "n": 2}, 400, "only n=1"),
    ("/completions", {"model": MODEL, "prompt": ["a", "b"]}, 400, "exactly one string"),
    ("/completions", {"model": "gpt-4", "prompt": "x"}, 404, "not served here"),
    ("/chat/completions", {"model": MODEL, "messages": []}, 400, "non-empty array"),
    ("/chat/completions", {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
    ("/chat/completions", {"model": MODEL, "messages": [{"role": "user"}]}, 400, "'content'"),
])
def test_malformed_requests_get_4xx_with_message(served, path, body, status, fragment):
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(served["base"] + path, timeout=30, **kwargs)
    assert r.status_code == status
    assert fragment in r.json()["error"]["message"]


def test_failing_request_does_not_disturb_others(served, monkeypatch):
    worker = served["app"].worker
    start = worker._start

    def failing_start(job):   # a request that fails inside generation (after admission)
        if job.input_ids.shape[1] == 4:
            raise RuntimeError("injected failure")
        return start(job)

    monkeypatch.setattr(worker, "_start", failing_start)
    client = _client(served)
    results, errors = {}, {}

    def good(n):
        out = client.completions.create(model=MODEL, prompt="Hello there", max_tokens=6, temperature=0)
        results[n] = out.choices[0].text

    def bad():
        try:
            client.completions.create(model=MODEL, prompt="BOOM", max_tokens=6, temperature=0)
        except openai.APIStatusError as err:
            errors["bad"] = (err.status_code, str(err))

    threads = [threading.Thread(target=good, args=(n,)) for n in range(3)] + [threading.Thread(target=bad)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors["bad"][0] == 500 and "injected failure" in errors["bad"][1]
    assert len(results) == 3 and len(set(results.values())) == 1     # all equal to the request served alone
    assert served["reference"].startswith(results[0])
    stats = httpx.get(served["base"] + "/stats", timeout=30).json()
    assert stats["worker"]["active"] == 0 and stats["worker"]["max_active"] == 2
    assert stats["serve/expert_slots_per_layer"] == 8


class _ImmediateLoop:
    def call_soon_threadsafe(self, fn, arg):
        fn(arg)


class _ListQueue(list):
    def put_nowait(self, item):
        self.append(item)


def test_stop_string_is_never_streamed(served):
    worker = served["app"].worker
    tok = worker.tokenizer
    job = Job(input_ids=torch.tensor([[72]]), max_tokens=10, temperature=0.0, top_p=1.0, stop=["\n\n"],
              seed=None, loop=_ImmediateLoop(), queue=_ListQueue())
    finishes = [worker._accept(job, t) for t in tok("ab\n").input_ids]
    assert finishes == [None, None, None]
    assert "".join(p for k, p in job.queue if k == "text") == "ab"        # "\n" held back: may start "\n\n"
    assert worker._accept(job, tok("\n").input_ids[0]) == "stop"
    assert "".join(p for k, p in job.queue if k == "text") == "ab"


def _small_app(tokenizer=None, model=None, **kwargs):
    """A second App on its own tiny model, for settings the shared fixture does not use."""
    model = model if model is not None else tiny_model("gpt_oss")
    handle = temoe.wrap(model)
    engine = OffloadEngine(handle, make_policy("full", handle.num_layers, handle.num_experts))
    app = App(engine, tokenizer if tokenizer is not None else char_tokenizer(), MODEL, **kwargs)
    server, thread, port = start_background(app.starlette)
    return app, f"http://127.0.0.1:{port}/v1", lambda: (setattr(server, "should_exit", True), thread.join(30))


def test_a_request_body_beyond_the_limit_is_refused_with_413(served):
    big = json.dumps({**X, "prompt": "a" * (3 * 1024 * 1024)}).encode()
    r = httpx.post(served["base"] + "/completions", content=big, timeout=30)
    assert r.status_code == 413 and "limit of 2097152 bytes" in r.json()["error"]["message"]

    def chunked():  # no Content-Length: the limit holds while the body streams in
        yield b'{"model": "%s", "prompt": "' % MODEL.encode()
        for _ in range(40):
            yield b"a" * 65536
        yield b'"}'

    r = httpx.post(served["base"] + "/completions", content=chunked(), timeout=30)
    assert r.status_code == 413


def test_tokenisation_runs_off_the_event_loop(served, monkeypatch):
    app = served["app"]
    original = app._job

    def slow_job(*args, **kwargs):  # stands in for templating/tokenising a very long prompt
        time.sleep(2.0)
        return original(*args, **kwargs)

    monkeypatch.setattr(app, "_job", slow_job)
    pending = threading.Thread(target=httpx.post, args=(served["base"] + "/completions",),
                               kwargs={"json": {**X, "max_tokens": 2}, "timeout": 30})
    pending.start()
    time.sleep(0.3)
    start = time.perf_counter()
    assert httpx.get(served["base"] + "/models", timeout=30).status_code == 200
    assert time.perf_counter() - start < 1.0  # not stalled behind the 2 s request
    pending.join()


def test_a_non_streaming_job_whose_client_left_is_cancelled_not_completed(served, monkeypatch):
    worker = served["app"].worker
    start = worker._start

    def slow_start(job):  # 0.1 s per token: the client's 0.5 s timeout fires mid-generation
        def steps():
            for token in start(job):
                time.sleep(0.1)
                yield token
        return steps()

    monkeypatch.setattr(worker, "_start", slow_start)
    before = dict(worker.load())
    with pytest.raises(httpx.TimeoutException):
        httpx.post(served["base"] + "/completions", json={**X, "max_tokens": 60, "temperature": 0},
                   timeout=0.5)
    deadline = time.time() + 20
    while worker.load()["cancelled"] == before["cancelled"] and time.time() < deadline:
        time.sleep(0.1)
    after = worker.load()
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["completed"] == before["completed"] and after["active"] == 0


def test_chat_needs_a_template_and_the_embedded_model_has_one():
    bare = char_tokenizer()
    bare.chat_template = None
    app, base, stop = _small_app(bare)
    try:
        r = httpx.post(base + "/chat/completions", json={"model": MODEL, "messages": [
            {"role": "user", "content": "hi"}]}, timeout=30)
        assert r.status_code == 400 and "has no chat template" in r.json()["error"]["message"]
    finally:
        stop()
    from temoe.serve.server import PLAIN_CHAT_TEMPLATE

    model, tokenizer = temoe.load_model("tiny")  # what `temoe serve --model tiny` serves
    app, base, stop = _small_app(tokenizer, model, chat_template=PLAIN_CHAT_TEMPLATE)
    try:
        text = "Problem: Compute 2 + 3.\nSolution:"
        r = httpx.post(base + "/chat/completions", json={"model": MODEL, "max_tokens": 4, "messages": [
            {"role": "user", "content": text}]}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["prompt_tokens"] == len(tokenizer(text).input_ids)  # the plain template
    finally:
        stop()


def test_an_api_key_is_required_when_set():
    app, base, stop = _small_app(api_key="s3cret")
    try:
        assert httpx.get(base + "/models", timeout=30).status_code == 401
        wrong = httpx.get(base + "/models", headers={"Authorization": "Bearer nope"}, timeout=30)
        assert wrong.status_code == 401 and "API key" in wrong.json()["error"]["message"]
        client = openai.OpenAI(base_url=base, api_key="s3cret", timeout=60, max_retries=0)
        assert [m.id for m in client.models.list().data] == [MODEL]
    finally:
        stop()


def test_python_api_refuses_zero_concurrency_and_queue():
    model = tiny_model("gpt_oss")
    handle = temoe.wrap(model)
    engine = OffloadEngine(handle, make_policy("full", handle.num_layers, handle.num_experts))
    for kwargs, message in (({"max_active": 0}, "max_active=0"), ({"max_queue": 0}, "max_queue=0")):
        with pytest.raises(ValueError, match=message + ": must be an integer >= 1"):
            App(engine, char_tokenizer(), MODEL, **kwargs)


def test_binding_beyond_loopback_warns():
    from temoe.cli.serve import _loopback

    assert _loopback("127.0.0.1") and _loopback("localhost") and _loopback("::1")
    assert not _loopback("0.0.0.0") and not _loopback("192.168.1.5")
