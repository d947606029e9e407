"""The OpenAI-compatible server against a tiny model on CPU: the `openai` client (streaming and not), 4xx for
malformed requests, and a failing request that does not disturb concurrent ones."""

from __future__ import annotations

import threading

import httpx
import openai
import pytest
import torch

import temoe
from temoe.serve.engine import OffloadEngine, make_policy
from temoe.serve.server import App, Job, start_background
from temoe.testing import char_tokenizer, tiny_model

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


@pytest.mark.parametrize("path,body,status,fragment", [
    ("/completions", b"{not json", 400, "not valid JSON"),
    ("/completions", b"[1, 2]", 400, "JSON object"),
    ("/completions", {"model": MODEL}, 400, "missing required field 'prompt'"),
    ("/completions", {"model": MODEL, "prompt": "x", "max_tokens": "ten"}, 400, "must be an integer"),
    ("/completions", {"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "max_tokens must be in"),
    ("/completions", {"model": MODEL, "prompt": "x", "temperature": 9}, 400, "temperature must be in"),
    ("/completions", {"model": MODEL, "prompt": "x", "n": 2}, 400, "only n=1"),
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
