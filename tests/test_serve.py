"""``fastrnn serve`` (issue 28): every test talks HTTP to a server started in a subprocess on a
free port (``--port 0``: the server prints the port it got), with clients nobody here wrote:
httpx (sync and async, streaming or not) and the official ``openai`` client.

What is checked:
- the text of every completion (streamed or not, alone or among 32 concurrent streams of other
  seeds and parameters, Hangul prompts included) is exactly ``model.generate``'s for the same
  prompt, seed and parameters; the classify endpoint gives ``model.classify``'s labels and
  probabilities; /v1/models, /health and /metrics (Prometheus text) answer;
- every fault of the issue: malformed JSON and wrong fields (400 naming the field), caps (400),
  a body over the limit (413), a full queue (429 with Retry-After), a missing or wrong API key
  (401; the comparison is hmac.compare_digest), a client that goes away (its row is freed), an
  error in one request (only it fails), SIGTERM (new connections refused, the requests in flight
  finish, exit code 0).
Nothing sleeps and then asserts: every wait polls a condition with a timeout.
"""
import asyncio
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import fastrnn
from conftest import require
from fastrnn.generate import bundled_model
from fastrnn.classify import bundled_classifier
from fastrnn.layers import Dense, Embedding
from helpers import random_recurrent

httpx = require("httpx")
require("starlette")
require("uvicorn")

TIMEOUT = 60.0   # seconds for any one wait (generous: the machine may be busy)
HANGUL = "가나다라마바사아자차카타파하각난닫랄맘밥삿앙잦찿캌탙팦핳 ."
API_KEY = "test-key-0123456789"


# ---------------------------------------------------------------------------------------------
# Servers in subprocesses
# ---------------------------------------------------------------------------------------------
class ServerProcess:
    """``fastrnn serve --port 0 ARGS`` in a subprocess (output to a file, never a pipe nobody
    reads); ``url`` once /health answers."""

    def __init__(self, log_path, *args, env=None):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "fastrnn.cli", "serve", "--port", "0",
                                      "--log-level", "warning", *map(str, args)],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONIOENCODING": "utf-8", **(env or {})})
        self.port = None
        deadline = time.monotonic() + TIMEOUT
        while self.port is None:
            found = re.search(r"on http://127\.0\.0\.1:(\d+)", self.output())
            if found:
                self.port = int(found.group(1))
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"the server did not start:\n{self.output()}")
            else:
                time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"
        poll(lambda: self._healthy(), "the server answers /health")

    def _healthy(self):
        try:
            return httpx.get(self.url + "/health", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def output(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def terminate(self):
        """SIGTERM, then the exit code (the server stops gracefully)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(TIMEOUT)
        finally:
            self.kill()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        self.log.close()


def poll(condition, what, timeout=TIMEOUT):
    """Wait until condition() is true (checked every 20 ms), at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


def metrics(url, headers=None):
    """/metrics as {'name{labels}': value}, every line checked against the text format."""
    r = httpx.get(url + "/metrics", headers=headers, timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for line in r.text.splitlines():
        if line.startswith("#"):
            assert re.fullmatch(r"# (HELP|TYPE) fastrnn_\w+ .+", line), line
            continue
        m = re.fullmatch(r'(fastrnn_\w+(?:\{(?:\w+="[^"]*",?)*\})?) (-?[0-9.e+-]+|\+Inf)', line)
        assert m, f"not Prometheus text: {line!r}"
        out[m.group(1)] = float(m.group(2))
    return out


def events(lines):
    """Server-sent events -> the JSON objects of the data lines, then 'DONE'."""
    out = []
    for line in lines:
        if not line:
            continue
        assert line.startswith("data: "), line
        data = line[len("data: "):]
        out.append("DONE" if data == "[DONE]" else json.loads(data))
    return out


def reference(model, body):
    """model.generate for each prompt of a completions body, alone."""
    prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
    kw = {"max_new_tokens": body.get("max_tokens"), "seed": body.get("seed"), "stop": body.get("stop")}
    for name in ("temperature", "top_k", "top_p", "repetition_penalty"):
        kw[name] = body.get(name)
    return [model.generate(p, **kw) for p in prompts]


@pytest.fixture(scope="module")
def lm():
    return bundled_model()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The bundled models, with the caps some tests reach."""
    s = ServerProcess(tmp_path_factory.mktemp("serve") / "server.log", "--max-batch", 40, "--max-tokens", 1000,
                      "--max-prompt-tokens", 300, "--max-body-bytes", 20000)
    yield s
    assert s.terminate() == 0
    assert "Traceback" not in s.output(), s.output()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as c:
        yield c


# ---------------------------------------------------------------------------------------------
# Completions: exactly model.generate
# ---------------------------------------------------------------------------------------------
CASES = [
    dict(prompt="def ", max_tokens=40, seed=1),
    dict(prompt="import os\n", max_tokens=60, seed=2, temperature=0.5, top_k=10),
    dict(prompt="class A:\n    ", max_tokens=80, seed=3, temperature=1.1, top_p=0.9, repetition_penalty=1.3,
         stop=["\n\n", "):"]),
    dict(prompt="x = ", max_tokens=50, temperature=0, stop="\n"),
    dict(prompt="안녕하세요, 세계 ", max_tokens=30, seed=5),
    dict(prompt=["def ", "for i in "], max_tokens=30, seed=6),
    dict(prompt="def ", seed=7),  # every other parameter: the model's defaults, as model.generate
    dict(prompt="def ", max_tokens=0, seed=1),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_completion_is_model_generate(client, lm, case):
    body = CASES[case]
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    want = reference(lm, body)
    assert data["object"] == "text_completion" and data["model"] == "char_lstm" and data["id"].startswith("cmpl-")
    assert [c["text"] for c in data["choices"]] == want
    assert [c["index"] for c in data["choices"]] == list(range(len(want)))
    limit = body.get("max_tokens", 200)
    for c in data["choices"]:
        assert c["finish_reason"] == ("length" if len(c["text"]) == limit else "stop")
    prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
    usage = data["usage"]
    assert usage["prompt_tokens"] == sum(len(p) for p in prompts)
    assert usage["completion_tokens"] >= sum(len(t) for t in want)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_streamed_completion_is_model_generate(client, lm):
    body = dict(prompt=["def f(", "# 한국어 주석\n"], max_tokens=120, seed=11, temperature=0.9, top_k=20,
                stop=["\n\n"], stream=True, stream_options={"include_usage": True})
    with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        got = events(r.iter_lines())
    assert got[-1] == "DONE"
    chunks, usage = got[:-2], got[-2]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] > 0
    want = reference(lm, body)
    for i, text in enumerate(want):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == i]
        assert "".join(c["text"] for c in mine) == text
        assert [c["finish_reason"] is not None for c in mine] == [False] * (len(mine) - 1) + [True]
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)


def test_32_concurrent_streams_each_equal_generate_alone(server, lm):
    """32 clients at once (async httpx), each with its own seed and parameters, half streamed:
    every text is model.generate's alone; the requests shared batched steps."""
    prompts = ["def ", "import ", "class Foo(", "    return ", "# 안녕 ", "for x in ", "if __name__", "\n"]
    bodies = []
    for i in range(32):
        body = dict(prompt=prompts[i % len(prompts)], max_tokens=60 + 7 * i, seed=1000 + i,
                    temperature=[0, 0.6, 0.9, 1.3][i % 4], top_k=[None, 5, 40][i % 3],
                    top_p=[None, 0.8][i % 2], repetition_penalty=[None, 1.2, 0.9][i % 3],
                    stop=[None, "\n", ["):", "  "]][i % 3], stream=i % 2 == 0)
        bodies.append({k: v for k, v in body.items() if v is not None})
    before = metrics(server.url)

    async def one(client, body):
        if not body["stream"]:
            r = await client.post("/v1/completions", json=body)
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["text"]
        async with client.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            got = events([line async for line in r.aiter_lines()])
        assert got[-1] == "DONE"
        return "".join(c["choices"][0]["text"] for c in got[:-1])

    async def all_of_them():
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT, limits=limits) as client:
            return await asyncio.gather(*(one(client, b) for b in bodies))

    texts = asyncio.run(all_of_them())
    for body, text in zip(bodies, texts):
        assert text == reference(lm, body)[0], body
    after = metrics(server.url)
    key = 'fastrnn_batch_occupancy_bucket{model="char_lstm",le="1.0"}'
    count = 'fastrnn_batch_occupancy_count{model="char_lstm"}'
    shared = (after[count] - after[key]) - (before.get(count, 0) - before.get(key, 0))
    assert shared > 0, "no step ran more than one row"
    assert after['fastrnn_generated_tokens_total{model="char_lstm"}'] >= before.get(
        'fastrnn_generated_tokens_total{model="char_lstm"}', 0) + sum(len(t) for t in texts)


def test_the_openai_client(server, lm):
    openai = require("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)
    assert {m.id for m in client.models.list()} == {"char_lstm", "langid"}
    done = client.completions.create(model="char_lstm", prompt="def ", max_tokens=50, seed=3, temperature=0.7,
                                     stop=["\n\n"])
    assert done.choices[0].text == lm.generate("def ", max_new_tokens=50, seed=3, temperature=0.7, stop=["\n\n"])
    assert done.usage.prompt_tokens == 4
    pieces, reasons = [], []
    for chunk in client.completions.create(model="char_lstm", prompt="안녕 def ", max_tokens=64, seed=4, top_p=0.9,
                                           stream=True, extra_body={"top_k": 30, "repetition_penalty": 1.2}):
        pieces.append(chunk.choices[0].text)
        reasons.append(chunk.choices[0].finish_reason)
    assert "".join(pieces) == lm.generate("안녕 def ", max_new_tokens=64, seed=4, top_p=0.9, top_k=30,
                                          repetition_penalty=1.2)
    assert reasons[-1] == "length" and set(reasons[:-1]) <= {None}
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="char_lstm", prompt="def ", max_tokens=-1)
    assert bad.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="def ")


# ---------------------------------------------------------------------------------------------
# Classify, models, health, metrics
# ---------------------------------------------------------------------------------------------
def test_classify_is_model_classify(client):
    texts = ["the house is on the hill", "la maison est sur la colline", "das Haus ist auf dem Hügel",
             "안녕하세요 여러분", "", "el perro"]
    r = client.post("/v1/classify", json={"input": texts})
    assert r.status_code == 200, r.text
    data = r.json()
    want = list(bundled_classifier().classify(texts))
    assert data["model"] == "langid" and data["labels"] == bundled_classifier().metadata["labels"]
    assert [d["index"] for d in data["data"]] == list(range(len(texts)))
    assert [d["label"] for d in data["data"]] == [w.label for w in want]
    assert data["data"][3]["label"] == "unknown"
    for d, w in zip(data["data"], want):
        np.testing.assert_allclose([d["probabilities"][k] for k in data["labels"]], w.probabilities, rtol=1e-6,
                                   atol=1e-7)
        assert d["unknown_fraction"] == pytest.approx(w.unknown_fraction)
    one = client.post("/v1/classify", json={"input": "la maison", "model": "langid"}).json()
    assert [d["label"] for d in one["data"]] == [next(iter(bundled_classifier().classify(["la maison"]))).label]


def test_concurrent_classify_requests(server):
    texts = [[f"{w} {i}" for w in ("maison", "house", "Haus")] for i in range(12)]

    async def go():
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as c:
            return await asyncio.gather(*(c.post("/v1/classify", json={"input": t}) for t in texts))

    answers = asyncio.run(go())
    model = bundled_classifier()
    for t, r in zip(texts, answers):
        assert r.status_code == 200
        assert [d["label"] for d in r.json()["data"]] == [c.label for c in model.classify(t)]


def test_classify_requests_arriving_together_share_one_batch():
    """The micro-batcher (in this process): requests queued within the wait form one batch."""
    from fastrnn.serve.metrics import Metrics
    from fastrnn.serve.workers import ClassifyJob, ClassifyWorker

    model, m = bundled_classifier(), Metrics()
    worker = ClassifyWorker("langid", model, m, wait_seconds=5.0, max_inputs=6)
    results = {}
    done = threading.Event()
    texts = [["maison"], ["house", "Haus"], ["casa"], ["hus", "talo", "dom"], ["huis"]]

    def finish(i):
        def on_done(res, err):
            results[i] = (res, err)
            if len(results) == len(texts):
                done.set()
        return on_done
    for i, t in enumerate(texts):
        worker.submit(ClassifyJob(t, finish(i)))
    worker.start()  # queued before the thread starts: batches are [0, 1, 2] (4 texts) then [3, 4] (4 texts)
    assert done.wait(TIMEOUT)
    worker.stop(TIMEOUT)
    assert m.classify_batches.value("langid") == 2
    for i, t in enumerate(texts):
        res, err = results[i]
        assert err is None and [r.label for r in res] == [r.label for r in model.classify(t)]


def test_a_failing_step_or_batch_fails_only_what_it_holds(monkeypatch):
    """In this process: an exception inside a batched step fails the streams then in the batch
    (an internal error) and the engine goes on with fresh rows; a classify batch that raises is
    retried request by request, so only the request at fault fails."""
    from fastrnn.generate.batch_session import BatchSession
    from fastrnn.serve.metrics import Metrics
    from fastrnn.serve.workers import ClassifyJob, ClassifyWorker, GenerationWorker, StreamTag

    model = bundled_model()
    got, lock = {}, threading.Lock()

    def deliver(items):
        with lock:
            for job, index, piece, tokens, finish, error in items:
                text, _, _ = got.get(job, ("", None, None))
                got[job] = (text + piece, finish, error)

    worker = GenerationWorker("char_lstm", model, deliver, Metrics(), capacity=4)
    real_step = BatchSession.step
    calls = {"n": 0}

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("a bug")
        return real_step(self)
    monkeypatch.setattr(BatchSession, "step", flaky)
    streams = [worker.make_stream("def ", max_new_tokens=30, seed=i) for i in range(2)]
    for i, st in enumerate(streams):
        st.tag = StreamTag(f"early{i}", 0, time.monotonic())
    worker.submit(streams)
    worker.start()
    try:
        poll(lambda: len(got) == 2 and all(v[1] for v in got.values()), "the failed streams are reported")
        assert {v[1] for v in got.values()} == {"error"} and all("internal error" in v[2] for v in got.values())
        later = worker.make_stream("def ", max_new_tokens=30, seed=5)
        later.tag = StreamTag("later", 0, time.monotonic())
        worker.submit([later])
        poll(lambda: got.get("later", (0, None))[1] is not None, "the next stream finishes")
        assert got["later"] == (model.generate("def ", max_new_tokens=30, seed=5), "length", None)
    finally:
        worker.stop(TIMEOUT)

    classifier = bundled_classifier()
    cw = ClassifyWorker("langid", classifier, Metrics(), wait_seconds=5.0, max_inputs=100)
    real = cw._classify
    monkeypatch.setattr(cw, "_classify", lambda texts: real(texts) if "boom" not in texts else 1 / 0)
    answers, done = {}, threading.Event()

    def on_done(i):
        def settle(results, error):
            answers[i] = (results, error)
            if len(answers) == 3:
                done.set()
        return settle
    for i, texts in enumerate([["maison"], ["boom", "house"], ["Haus"]]):
        cw.submit(ClassifyJob(texts, on_done(i)))
    cw.start()
    assert done.wait(TIMEOUT)
    cw.stop(TIMEOUT)
    assert answers[1][0] is None and "ZeroDivisionError" in answers[1][1]
    assert [r.label for r in answers[0][0]] == [next(iter(classifier.classify(["maison"]))).label]
    assert [r.label for r in answers[2][0]] == [next(iter(classifier.classify(["Haus"]))).label]


def test_models_health_metrics(client, server):
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert {(m["id"], m["task"], m["owned_by"]) for m in models["data"]} == {("char_lstm", "generate", "fastrnn"),
                                                                              ("langid", "classify", "fastrnn")}
    assert client.get("/v1/models/langid").json()["id"] == "langid"
    assert client.get("/v1/models/nope").status_code == 404
    assert client.get("/health").json() == {"status": "ok", "models": ["char_lstm", "langid"]}
    client.post("/v1/completions", json={"prompt": "a", "max_tokens": 3})
    m = metrics(server.url)
    assert m['fastrnn_requests_total{endpoint="/v1/completions",status="200"}'] >= 1
    assert m['fastrnn_batch_capacity{model="char_lstm"}'] == 40
    assert 'fastrnn_queue_length{model="char_lstm"}' in m and 'fastrnn_queue_length{model="langid"}' in m
    for family in ("time_to_first_token_seconds", "inter_token_latency_seconds", "batch_occupancy"):
        count = m[f'fastrnn_{family}_count{{model="char_lstm"}}']
        assert count > 0 and m[f'fastrnn_{family}_bucket{{model="char_lstm",le="+Inf"}}'] == count
    assert m['fastrnn_generated_tokens_total{model="char_lstm"}'] >= 3
    assert m['fastrnn_streams_total{model="char_lstm",reason="length"}'] >= 1


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
BAD_FIELDS = [
    ({"prompt": 5}, "prompt"), ({"prompt": []}, "prompt"), ({"prompt": ""}, "prompt"), ({}, "prompt"),
    ({"prompt": [[1, 2], "a"]}, "prompt"), ({"prompt": [0, 500]}, "prompt"),
    ({"prompt": "a", "max_tokens": "x"}, "max_tokens"), ({"prompt": "a", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "a", "max_tokens": 1.5}, "max_tokens"), ({"prompt": "a", "temperature": -0.1}, "temperature"),
    ({"prompt": "a", "temperature": "hot"}, "temperature"), ({"prompt": "a", "top_p": 0}, "top_p"),
    ({"prompt": "a", "top_p": 1.5}, "top_p"), ({"prompt": "a", "top_k": -1}, "top_k"),
    ({"prompt": "a", "top_k": True}, "top_k"), ({"prompt": "a", "repetition_penalty": 0}, "repetition_penalty"),
    ({"prompt": "a", "seed": "one"}, "seed"), ({"prompt": "a", "seed": 1.0}, "seed"),
    ({"prompt": "a", "stop": 5}, "stop"), ({"prompt": "a", "stop": ["a", ""]}, "stop"),
    ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"prompt": "a", "stream": "yes"}, "stream"),
    ({"prompt": "a", "stop": "x" * 65}, "stop"), ({"prompt": "a", "stop": ["\n", "y" * 65]}, "stop"),  # > 64 tokens
    ({"prompt": "a", "stream_options": {"include_usage": True}}, "stream_options"),
    ({"prompt": "a", "model": 3}, "model"), ({"prompt": "a", "max_token": 3}, "max_token"),
    ({"prompt": "a", "n": 2}, "n"), ({"prompt": "a", "echo": True}, "echo"),
    ({"prompt": "a", "logprobs": 2}, "logprobs"),
    ({"prompt": "a", "best_of": 3}, "best_of"), ({"prompt": "a", "presence_penalty": 0.5}, "presence_penalty"),
    ({"prompt": "a", "logit_bias": {"5": 1}}, "logit_bias"), ({"prompt": "a", "suffix": "x"}, "suffix"),
    ({"prompt": "a", "model": "langid"}, "model"),
    ({"prompt": "a", "max_tokens": 1001}, "max_tokens"),                       # over --max-tokens 1000
    ({"prompt": "a" * 301}, "prompt"), ({"prompt": ["a", "b" * 301]}, "prompt"),  # over --max-prompt-tokens 300
    ({"prompt": ["a"] * 41}, "prompt"),                                         # over --max-batch 40
]


@pytest.mark.parametrize("body,param", BAD_FIELDS, ids=[f"{p}-{i}" for i, (_, p) in enumerate(BAD_FIELDS)])
def test_bad_fields_are_400_naming_the_field(client, body, param):
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 400, (body, r.text)
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["message"].startswith((param, f"{param}[")) or param == "model"


def test_stop_too_long_counts_the_tokens_of_every_stop(lm):
    """The cap on stop tokens reads the stream's stop sequences: every one the model can produce,
    one-token ones included (a stop of symbols the model never produces is dropped, as generate
    drops it, and costs nothing)."""
    from fastrnn.generate import BatchSession
    from fastrnn.serve.protocol import APIError, Limits, stop_too_long

    session = BatchSession(lm, capacity=1)

    def check(stop, cap):
        stop_too_long(session.make_stream("def ", max_new_tokens=5, stop=stop), Limits(max_stop_tokens=cap))

    for stop, cap in [("x" * 65, 64), (["a", "b" * 65], 64), ("abcd", 3), ("a", 0), (["\n", "b"], 0), ([7], 0)]:
        with pytest.raises(APIError, match=f"longer than {cap} tokens") as info:
            check(stop, cap)
        assert info.value.status == 400 and info.value.param == "stop"
    for stop, cap in [("x" * 64, 64), ("abc", 3), (["a", "\n"], 1), ("하" * 100, 64), (None, 0)]:
        check(stop, cap)


def test_malformed_json_is_400(client):
    for raw, fragment in [(b'{"prompt": "a",', "not valid JSON"), (b"[1, 2]", "JSON object"),
                          (b"\xff\xfe", "not UTF-8"), (b"", "empty"), (b'{"prompt": "a" "x"}', "line 1 column")]:
        r = client.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400, raw
        error = r.json()["error"]
        assert fragment in error["message"] and error["code"] == "invalid_json" and error["param"] is None
    r = client.post("/v1/classify", json={"input": 5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    r = client.post("/v1/classify", json={"input": ["a"], "inputs": ["b"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "inputs"
    r = client.post("/v1/classify", json={"input": ["x" * 301]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"


def test_a_body_over_the_limit_is_413(client):
    big = json.dumps({"prompt": "a" * 30000}).encode()
    r = client.post("/v1/completions", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: counted while it arrives
        yield big[:10000]
        yield big[10000:]
    r = client.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert client.post("/v1/completions", json={"prompt": "a", "max_tokens": 2}).status_code == 200


def test_unknown_routes_and_models(client):
    r = client.post("/v1/completions", json={"prompt": "a", "model": "gpt-3.5-turbo-instruct"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert "char_lstm" in r.json()["error"]["message"]
    r = client.post("/v1/chat/completions", json={})
    assert r.status_code == 404 and "error" in r.json()
    r = client.get("/v1/completions")
    assert r.status_code == 405 and "error" in r.json()
    r = client.post("/v1/classify", json={"input": ["a"], "model": "char_lstm"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


# ---------------------------------------------------------------------------------------------
# Faults: queue bound, disconnects, keys, one failing request, SIGTERM
# ---------------------------------------------------------------------------------------------
def test_queue_bound_is_429_and_a_client_that_leaves_frees_its_row(tmp_path, lm):
    """One row and a queue of one: a never-ending stream holds the row, a second request waits,
    a third gets 429 with Retry-After. When the stream's client goes away its row is freed and
    the waiting request runs; a non-streamed request whose client leaves is freed as well."""
    s = ServerProcess(tmp_path / "tight.log", "--max-batch", 1, "--max-queue", 1, "--max-tokens", 10 ** 8)
    try:
        url = s.url

        def gauge(name):
            return metrics(url).get(f'fastrnn_{name}{{model="char_lstm"}}', 0)

        def cancelled():
            return metrics(url).get('fastrnn_streams_total{model="char_lstm",reason="cancelled"}', 0)

        with httpx.Client(base_url=url, timeout=TIMEOUT) as c:
            with c.stream("POST", "/v1/completions", json={"prompt": "def ", "max_tokens": 10 ** 8,
                                                           "stream": True}) as endless:
                assert endless.status_code == 200
                lines = endless.iter_lines()  # kept: a dropped iterator closes the response
                next(lines)  # it runs
                waiting = {}
                t = threading.Thread(target=lambda: waiting.update(r=httpx.post(
                    url + "/v1/completions", json={"prompt": "x = ", "max_tokens": 20, "seed": 9}, timeout=TIMEOUT)))
                t.start()
                poll(lambda: gauge("queue_length") == 1, "the second request waits in the queue")
                r = c.post("/v1/completions", json={"prompt": "a", "max_tokens": 2})
                assert r.status_code == 429
                assert r.headers["retry-after"] == "1"
                assert r.json()["error"]["type"] == "rate_limit_error"
                assert r.json()["error"]["code"] == "rate_limit_exceeded"
                assert not waiting and cancelled() == 0
                lines.close()
            # the stream's client has gone: its row is freed and the waiting request runs
            t.join(TIMEOUT)
            assert waiting["r"].status_code == 200
            assert waiting["r"].json()["choices"][0]["text"] == lm.generate("x = ", max_new_tokens=20, seed=9)
            assert cancelled() == 1
            poll(lambda: gauge("batch_active_rows") == 0, "the row is free")
        # a non-streamed request whose client closes the connection
        body = json.dumps({"prompt": "def ", "max_tokens": 10 ** 8}).encode()
        sock = socket.create_connection(("127.0.0.1", s.port), timeout=TIMEOUT)
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        poll(lambda: gauge("batch_active_rows") == 1, "the request decodes")
        sock.close()
        poll(lambda: cancelled() == 2 and gauge("batch_active_rows") == 0, "the row of the gone client is free")
        assert httpx.post(url + "/v1/completions", json={"prompt": "a", "max_tokens": 3},
                          timeout=TIMEOUT).status_code == 200
    finally:
        assert s.terminate() == 0


def faulty_model(path):
    """A Hangul language model (a ReLU RNN) in which the token '!' overflows: its embedding is
    finite but so large that the logits after it are not, so a prompt with '!' makes that
    stream fail. '!' is never generated (the Dense covers the other tokens only)."""
    rng = np.random.default_rng(5)
    V = len(HANGUL)
    emb = rng.standard_normal((V + 1, 8)).astype(np.float32)
    emb[V] = 3e37  # W_ih x about 8e37 (a float32 still), the logits beyond 3.4e38: infinite
    layers = [Embedding(emb), random_recurrent(rng, "rnn", input_size=8, hidden_size=24, scale=0.3, name="rnn",
                                               activations=("relu",)),
              Dense((rng.standard_normal((V, 24)) * 2).astype(np.float32), np.zeros(V, np.float32))]
    model = fastrnn.Model(layers, vocabulary=fastrnn.Vocabulary(list(HANGUL + "!")), name="hangul")
    fastrnn.save(model, path)
    model = fastrnn.load(path)
    with pytest.raises(fastrnn.generate.GenerationError):
        model.generate("가!", max_new_tokens=3)
    return model


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """A server of a Hangul model (with a NaN token) that wants an API key (from FASTRNN_API_KEY)."""
    where = tmp_path_factory.mktemp("keyed")
    model = faulty_model(where / "hangul.safetensors")
    s = ServerProcess(where / "server.log", f"korean={where / 'hangul.safetensors'}", env={"FASTRNN_API_KEY": API_KEY})
    yield s, model
    assert s.terminate() == 0


AUTH = {"Authorization": f"Bearer {API_KEY}"}


def test_api_key(keyed):
    s, _ = keyed
    body = {"prompt": "가나", "max_tokens": 3}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"},
                    {"Authorization": f"Bearer {API_KEY}x"}, {"Authorization": API_KEY}):
        r = httpx.post(s.url + "/v1/completions", json=body, headers=headers, timeout=TIMEOUT)
        assert r.status_code == 401, headers
        assert r.json()["error"]["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
        assert httpx.get(s.url + "/metrics", headers=headers, timeout=TIMEOUT).status_code == 401
        assert httpx.get(s.url + "/v1/models", headers=headers, timeout=TIMEOUT).status_code == 401
    assert httpx.get(s.url + "/health", timeout=TIMEOUT).status_code == 200  # open: for load balancers
    assert httpx.post(s.url + "/v1/completions", json=body, headers=AUTH, timeout=TIMEOUT).status_code == 200
    m = metrics(s.url, AUTH)
    assert m['fastrnn_requests_total{endpoint="/v1/completions",status="401"}'] == 5


def test_the_api_key_flag_wins_over_the_environment(tmp_path):
    """``--api-key`` sets the key (the bundled models, ``--threads 1``), and a FASTRNN_API_KEY in
    the environment beside it is not a second key: only the flag's key is let in."""
    s = ServerProcess(tmp_path / "server.log", "--api-key", "flag-key", "--threads", "1",
                      env={"FASTRNN_API_KEY": "env-key"})
    try:
        for key, status in (("flag-key", 200), ("env-key", 401), (None, 401)):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            assert httpx.get(s.url + "/v1/models", headers=headers, timeout=TIMEOUT).status_code == status, key
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "def ", "max_tokens": 4, "seed": 1},
                       headers={"Authorization": "Bearer flag-key"}, timeout=TIMEOUT)
        assert r.status_code == 200 and len(r.json()["choices"][0]["text"]) > 0
    finally:
        assert s.terminate() == 0


def test_the_key_is_compared_in_constant_time(monkeypatch):
    """Server.check_key compares the SHA-256 of the given key with the key's by hmac.compare_digest
    (whatever the given key's length), and refuses a wrong scheme only after comparing."""
    from fastrnn.serve import app
    from fastrnn.serve.protocol import APIError

    calls = []
    real = app.hmac.compare_digest
    monkeypatch.setattr(app.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))

    class Request:
        def __init__(self, value):
            self.headers = {"authorization": value} if value is not None else {}

    server = app.Server(api_key="k3y")
    digest = hashlib.sha256(b"k3y").digest()
    server.check_key(Request("Bearer k3y"))
    for value in (None, "Bearer x", "Bearer " + "k" * 10000, "Token k3y"):
        with pytest.raises(APIError) as err:
            server.check_key(Request(value))
        assert err.value.status == 401
    assert len(calls) == 5 and all(b == digest and len(a) == len(digest) for a, b in calls)


def test_an_error_in_one_request_fails_only_it(keyed):
    """Prompts with the NaN token fail (500 for a plain request, an error event in a stream),
    while the requests decoding beside them, and after them, get model.generate's text."""
    s, model = keyed
    good = [dict(prompt="가나다 ", max_tokens=80, seed=i, temperature=0.9, stop="하") for i in range(6)]
    bad = dict(prompt="가나!", max_tokens=80, seed=1)

    async def go():
        async with httpx.AsyncClient(base_url=s.url, timeout=TIMEOUT, headers=AUTH) as c:
            async def stream(body):
                async with c.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                    return r.status_code, events([line async for line in r.aiter_lines()])
            return await asyncio.gather(*(c.post("/v1/completions", json=b) for b in good[:3]),
                                        c.post("/v1/completions", json=bad), stream(bad),
                                        *(stream(b) for b in good[3:]))

    answers = asyncio.run(go())
    plain, (status, streamed) = answers[3], answers[4]
    assert plain.status_code == 500
    assert plain.json()["error"]["code"] == "generation_failed" and "NaN" in plain.json()["error"]["message"]
    assert status == 200 and "error" in streamed[-1] and "NaN" in streamed[-1]["error"]["message"]
    texts = [a.json()["choices"][0]["text"] for a in answers[:3]]
    texts += ["".join(e["choices"][0]["text"] for e in got[:-1]) for _, got in answers[5:]]
    assert texts == [reference(model, b)[0] for b in good]
    assert all(set(t) <= set(HANGUL) for t in texts) and any(texts)
    after = httpx.post(s.url + "/v1/completions", json=good[0], headers=AUTH, timeout=TIMEOUT)
    assert after.json()["choices"][0]["text"] == texts[0]


def test_hangul_in_and_out(keyed):
    s, model = keyed
    body = {"prompt": ["가나다라", "하하 "], "max_tokens": 40, "seed": 3, "top_k": 8, "stop": ["다 ", "각각"]}
    r = httpx.post(s.url + "/v1/completions", json=body, headers=AUTH, timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert [c["text"] for c in r.json()["choices"]] == reference(model, body)
    raw = r.content.decode("utf-8")
    assert r.json()["choices"][0]["text"] in raw  # not \\u-escaped: Hangul travels as UTF-8
    with httpx.stream("POST", s.url + "/v1/completions", json={**body, "stream": True}, headers=AUTH,
                      timeout=TIMEOUT) as streamed:
        got = events(streamed.iter_lines())
    for i, want in enumerate(reference(model, body)):
        assert "".join(e["choices"][0]["text"] for e in got[:-1] if e["choices"][0]["index"] == i) == want
    r = httpx.post(s.url + "/v1/completions", json={"prompt": "abc"}, headers=AUTH, timeout=TIMEOUT)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    assert "not in the model's vocabulary" in r.json()["error"]["message"]


def test_sigterm_stops_accepting_finishes_what_is_in_flight_and_exits_0(tmp_path, lm):
    """A streamed request decoding, and one whose handler has started (its client waits for
    '100 Continue' before sending the body, so the server has begun reading it) when SIGTERM
    comes: new connections are refused, both requests complete with model.generate's text, and
    the server exits with code 0."""
    import h11

    s = ServerProcess(tmp_path / "term.log", "--shutdown-timeout", 120)
    streaming_body = {"prompt": "def ", "max_tokens": 3000, "seed": 21, "stream": True}
    late_body = {"prompt": "class ", "max_tokens": 500, "seed": 22, "stream": True}
    raw = json.dumps(late_body).encode()
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=TIMEOUT)
    conn = h11.Connection(h11.CLIENT)

    def next_event():
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(sock.recv(65536))

    sock.sendall(conn.send(h11.Request(method="POST", target="/v1/completions", headers=[
        ("Host", "127.0.0.1"), ("Content-Type", "application/json"), ("Content-Length", str(len(raw))),
        ("Expect", "100-continue")])))
    continued = next_event()
    assert isinstance(continued, h11.InformationalResponse) and continued.status_code == 100
    try:
        with httpx.Client(base_url=s.url, timeout=TIMEOUT) as c:
            with c.stream("POST", "/v1/completions", json=streaming_body) as r:
                lines = r.iter_lines()
                first = next(lines)
                s.proc.send_signal(signal.SIGTERM)

                def refused():
                    try:
                        socket.create_connection(("127.0.0.1", s.port), timeout=TIMEOUT).close()
                        return False
                    except ConnectionRefusedError:
                        return True
                poll(refused, "new connections are refused")
                streamed = events([first, *lines])
        sock.sendall(conn.send(h11.Data(data=raw)) + conn.send(h11.EndOfMessage()))
        response = next_event()
        assert isinstance(response, h11.Response) and response.status_code == 200
        data = b""
        while not isinstance(event := next_event(), h11.EndOfMessage):
            data += event.data
        late = events(data.decode("utf-8").split("\n"))
        assert s.proc.wait(TIMEOUT) == 0
    finally:
        sock.close()
        s.kill()
    for got, body in ((streamed, streaming_body), (late, late_body)):
        assert got[-1] == "DONE"
        assert "".join(e["choices"][0]["text"] for e in got[:-1]) == reference(lm, body)[0]
    assert "Traceback" not in s.output()


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------
def run_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT * 2,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8"})


def test_the_command_line_needs_the_extra_only_to_serve():
    out = run_python("import sys\nfrom fastrnn.cli import build_parser\nbuild_parser()\n"
                     "print('starlette' in sys.modules, 'uvicorn' in sys.modules)")
    assert out.returncode == 0 and out.stdout.split() == ["False", "False"]
    out = run_python("import sys\nsys.modules['starlette'] = None\nfrom fastrnn.cli import main\n"
                     "sys.exit(main(['serve']))")
    assert out.returncode == 2
    assert 'pip install ".[serve]"' in out.stderr and "starlette" in out.stderr


def test_the_command_line_refuses_what_it_cannot_serve(tmp_path):
    rng = np.random.default_rng(0)
    regression = fastrnn.Model([random_recurrent(rng, "gru", input_size=3, hidden_size=4),
                                Dense(np.ones((2, 4), np.float32))])
    fastrnn.save(regression, tmp_path / "reg.safetensors")
    for args, fragment in [([str(tmp_path / "reg.safetensors")], "no vocabulary"),
                           ([str(tmp_path / "missing.safetensors")], "no such model file"),
                           (["--max-batch", "0"], "--max-batch must be >= 1")]:
        out = subprocess.run([sys.executable, "-m", "fastrnn.cli", "serve", "--port", "0", *args],
                             capture_output=True, text=True, timeout=TIMEOUT * 2)
        assert out.returncode == 2 and fragment in out.stderr, out.stderr
