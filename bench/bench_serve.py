"""``fastrnn serve`` under load: throughput and latency at 1, 8, 32 and 64 streaming clients (issue 28).

    python bench/bench_serve.py                         # 1 8 32 64 clients, 4 requests each, 200 tokens
    python bench/bench_serve.py -c 1 2 -n 1 -m 20       # a quick check that everything runs
    python bench/bench_serve.py --json serve.json       # the figures as JSON as well

Not part of the test suite. The bundled character model; every client streams (server-sent
events) and sends its requests one after the other, each a short prompt and exactly
``--max-tokens`` new tokens (no stop string), temperature 0.8, a seed of its own. Three ways of
producing the same tokens:
- ``fastrnn serve`` (continuous batching), started here as a subprocess with ``--max-batch 64``;
- the wrapper a user would write on the same stack: a Starlette route calling
  ``model.generate(prompt, stream=True)`` per request and streaming its pieces (Starlette runs
  the generator in its thread pool), on uvicorn, also a subprocess of this script (``--wrapper``);
- offline ``model.generate`` over the same prompts in one batch per concurrency level (the
  ceiling: no HTTP, no scheduling).
Figures per concurrency level: generated tokens per second over the run; time to first token
(request sent -> first text received) p50 / p99; inter-token latency p50 / p99, per token: the
gap between two text chunks of a stream divided over the chunk's tokens (the server may send
several tokens in one chunk when the client is slower than the model; ``chunks/token`` shows how
often). The client is a minimal HTTP/1.1 reader on asyncio (an HTTP library would cost more CPU
than the server it measures on a small machine); it runs in this process, so on a machine with
few cores it competes with the server: say how many cores when you quote the figures.
The issue's targets at 64 clients: >= 70% of the offline batched throughput, >= 5x the
per-request wrapper, inter-token p99 within 3x of the batch-1 time per token.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

PROMPTS = ["def ", "import ", "class ", "for i in ", "    return ", "if x:\n    ", "# ", "with open("]
TEMPERATURE = 0.8


# -- the per-request wrapper (run as a subprocess: python bench/bench_serve.py --wrapper) -------
def wrapper_app():
    import starlette.applications
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    from fastrnn.generate import bundled_model

    model = bundled_model()
    model.generate("a", max_new_tokens=2)

    async def completions(request):
        body = await request.json()
        pieces = model.generate(body["prompt"], max_new_tokens=body["max_tokens"], seed=body.get("seed"),
                                temperature=body.get("temperature"), stream=True, threads=1)

        def events():
            for piece in pieces:
                if piece:
                    chunk = {"object": "text_completion", "choices": [{"text": piece, "index": 0,
                                                                        "finish_reason": None}]}
                    yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"
        return StreamingResponse(events(), media_type="text/event-stream")

    return starlette.applications.Starlette(routes=[Route("/v1/completions", completions, methods=["POST"])])


def run_wrapper():
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    print(f"wrapper on http://127.0.0.1:{sock.getsockname()[1]}", file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn.Config(wrapper_app(), log_level="warning")).run(sockets=[sock])


# -- servers as subprocesses -------------------------------------------------------------------
class Subprocess:
    def __init__(self, args, name):
        self.log = tempfile.TemporaryFile()
        # from a scratch directory: `python -m fastrnn.cli` in a checkout would import its source tree
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, cwd=tempfile.gettempdir())
        deadline = time.monotonic() + 120
        while True:
            self.log.seek(0)
            text = self.log.read().decode("utf-8", "replace")
            found = re.search(r"on http://127\.0\.0\.1:(\d+)", text)
            if found:
                self.port = int(found.group(1))
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"{name} did not start:\n{text}")
            time.sleep(0.05)

    def cpu_seconds(self):
        """user + system CPU time of the subprocess so far (Linux; 0 elsewhere)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return 0.0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# -- the client ----------------------------------------------------------------------------------
async def stream_once(port, body):
    """POST a streamed completion; returns (t_sent, [(t_arrival, tokens in the chunk)])."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = json.dumps(body).encode()
    t0 = time.perf_counter()
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Connection: close\r\nContent-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"the server answered {status!r}")
    chunked = False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
            chunked = True
    arrivals, buffer, done = [], b"", False
    while not done:
        if chunked:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                break
            data = await reader.readexactly(size + 2)
            data = data[:-2]
        else:
            data = await reader.read(65536)
            if not data:
                break
        now = time.perf_counter()
        buffer += data
        tokens = 0
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            text = event.decode("utf-8")[len("data: "):]
            if text == "[DONE]":
                done = True
                break
            tokens += sum(len(c["text"]) for c in json.loads(text)["choices"])  # a character model: 1 token = 1 char
        if tokens:
            arrivals.append((now, tokens))
    writer.close()
    return t0, arrivals


async def load(port, clients, requests, max_tokens):
    """``clients`` concurrent clients, each sending ``requests`` streamed requests in a row."""
    records = []

    async def client(c):
        for r in range(requests):
            body = {"prompt": PROMPTS[(c + r) % len(PROMPTS)], "max_tokens": max_tokens, "seed": 1000 * c + r,
                    "temperature": TEMPERATURE, "stream": True}
            records.append(await stream_once(port, body))

    t0 = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    return time.perf_counter() - t0, records


def summarize(seconds, records):
    tokens = sum(n for _, arrivals in records for _, n in arrivals)
    ttft, itl, chunks = [], [], 0
    for t0, arrivals in records:
        if not arrivals:
            continue
        ttft.append(arrivals[0][0] - t0)
        chunks += len(arrivals)
        for (a, _), (b, n) in zip(arrivals, arrivals[1:]):
            itl.extend([(b - a) / n] * n)
    return {"tokens_per_s": tokens / seconds, "ttft_p50": percentile(ttft, 50), "ttft_p99": percentile(ttft, 99),
            "itl_p50": percentile(itl, 50), "itl_p99": percentile(itl, 99),
            "chunks_per_token": chunks / max(tokens, 1), "tokens": tokens}


def percentile(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def offline(model, clients, requests, max_tokens):
    """model.generate over each round's prompts in one batch (the same prompts, seeds, tokens)."""
    t0 = time.perf_counter()
    tokens = 0
    for r in range(requests):
        prompts = [PROMPTS[(c + r) % len(PROMPTS)] for c in range(clients)]
        out = model.generate(prompts, max_new_tokens=max_tokens, seed=[1000 * c + r for c in range(clients)],
                             temperature=TEMPERATURE, threads=1)
        tokens += sum(len(t) for t in out)
    return tokens / (time.perf_counter() - t0)


def machine():
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}, {cores} cores, Python {platform.python_version()}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("-n", "--requests", type=int, default=4, help="requests per client (default 4)")
    parser.add_argument("-m", "--max-tokens", type=int, default=200, help="tokens per request (default 200)")
    parser.add_argument("--threads", type=int, default=1, help="fastrnn serve --threads (default 1)")
    parser.add_argument("--skip-wrapper", action="store_true", help="leave out the per-request wrapper")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--wrapper", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.wrapper:
        return run_wrapper()

    from fastrnn.generate import bundled_model

    model = bundled_model()
    serve = Subprocess([sys.executable, "-m", "fastrnn.cli", "serve", "--port", "0", "--log-level", "warning",
                        "--max-batch", str(max(64, max(args.clients))), "--threads", str(args.threads),
                        "--max-queue", "1024"], "fastrnn serve")
    wrapper = None if args.skip_wrapper else Subprocess([sys.executable, os.path.abspath(__file__), "--wrapper"],
                                                         "the wrapper")
    results = {"machine": machine(), "max_tokens": args.max_tokens, "requests_per_client": args.requests,
               "levels": []}
    try:
        servers = [("serve", serve.port)] + ([("wrapper", wrapper.port)] if wrapper else [])
        for _, port in servers:  # warm up
            asyncio.run(load(port, 2, 1, 8))
        offline(model, 2, 1, 8)
        batch1 = offline(model, 1, args.requests, args.max_tokens)
        results["batch1_seconds_per_token"] = 1 / batch1
        for clients in args.clients:
            ceiling = offline(model, clients, args.requests, args.max_tokens)
            level = {"clients": clients, "offline_tokens_per_s": ceiling}
            for (name, port), proc in zip(servers, (serve, wrapper)):
                cpu0, client0 = proc.cpu_seconds(), time.process_time()
                level[name] = summarize(*asyncio.run(load(port, clients, args.requests, args.max_tokens)))
                tokens = max(level[name]["tokens"], 1)
                level[name]["server_cpu_us_per_token"] = (proc.cpu_seconds() - cpu0) / tokens * 1e6
                level[name]["client_cpu_us_per_token"] = (time.process_time() - client0) / tokens * 1e6
            results["levels"].append(level)
            print(f"  {clients} clients done", file=sys.stderr, flush=True)
    finally:
        serve.stop()
        if wrapper:
            wrapper.stop()
    report(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


def report(results):
    ms = 1e3
    print(f"\nfastrnn serve, bundled character model, {results['max_tokens']} tokens per request, "
          f"{results['requests_per_client']} requests per client; {results['machine']}")
    print(f"batch-1 time per token (offline): {results['batch1_seconds_per_token'] * ms:.3f} ms\n")
    print("| clients | serve tok/s | offline tok/s | serve/offline | wrapper tok/s | serve/wrapper | "
          "TTFT p50 / p99 (ms) | inter-token p50 / p99 (ms) | chunks/token | CPU us/token server, client |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for level in results["levels"]:
        s = level["serve"]
        w = level.get("wrapper")
        print(f"| {level['clients']} | {s['tokens_per_s']:,.0f} | {level['offline_tokens_per_s']:,.0f} | "
              f"{s['tokens_per_s'] / level['offline_tokens_per_s']:.0%} | "
              f"{'-' if w is None else format(w['tokens_per_s'], ',.0f')} | "
              f"{'-' if w is None else format(s['tokens_per_s'] / w['tokens_per_s'], '.1f') + 'x'} | "
              f"{s['ttft_p50'] * ms:.1f} / {s['ttft_p99'] * ms:.1f} | "
              f"{s['itl_p50'] * ms:.2f} / {s['itl_p99'] * ms:.2f} | "
              f"{s['chunks_per_token']:.2f} | {s['server_cpu_us_per_token']:.0f}, {s['client_cpu_us_per_token']:.0f} |")
    if any("wrapper" in level for level in results["levels"]):
        print("\nthe per-request wrapper's latencies:\n")
        print("| clients | TTFT p50 / p99 (ms) | inter-token p50 / p99 (ms) | chunks/token | CPU us/token server, client |")
        print("|---:|---:|---:|---:|---:|")
        for level in results["levels"]:
            w = level["wrapper"]
            print(f"| {level['clients']} | {w['ttft_p50'] * ms:.1f} / {w['ttft_p99'] * ms:.1f} | "
                  f"{w['itl_p50'] * ms:.2f} / {w['itl_p99'] * ms:.2f} | {w['chunks_per_token']:.2f} | "
                  f"{w['server_cpu_us_per_token']:.0f}, {w['client_cpu_us_per_token']:.0f} |")
    top = max(results["levels"], key=lambda x: x["clients"])
    s = top["serve"]
    print(f"\ntargets at {top['clients']} clients: serve/offline {s['tokens_per_s'] / top['offline_tokens_per_s']:.0%} "
          "(>= 70%)", end="")
    if "wrapper" in top:
        print(f", serve/wrapper {s['tokens_per_s'] / top['wrapper']['tokens_per_s']:.1f}x (>= 5x)", end="")
    print(f", inter-token p99 {s['itl_p99'] / results['batch1_seconds_per_token']:.1f}x the batch-1 time per token "
          "(<= 3x)")


if __name__ == "__main__":
    sys.exit(main())
