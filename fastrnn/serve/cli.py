"""The command line: ``fastrnn serve [MODEL ...]`` (a top layer: it loads models).

This module imports neither Starlette nor uvicorn until the command runs, so ``fastrnn --help``
works without the serve extra, and ``fastrnn serve`` without it says what to install.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import time

DEFAULTS = {"host": "127.0.0.1", "port": 8000, "max_batch": 64, "threads": 1, "max_queue": 256,
            "max_body_bytes": 1 << 20, "max_prompt_tokens": 4096, "max_tokens": 4096, "max_classify_inputs": 256,
            "batch_wait_ms": 5.0, "shutdown_timeout": 30.0}


def add_cli(subparsers):
    d = DEFAULTS
    p = subparsers.add_parser(
        "serve", help="serve models over HTTP: OpenAI-compatible completions with continuous batching, "
                      "classification, metrics (needs Starlette and uvicorn: in a fastrnn checkout, "
                      "pip install \".[serve]\")",
        description="Serve language models (POST /v1/completions, OpenAI's schema, streamed or not) and "
                    "classifiers (POST /v1/classify) over HTTP. Concurrent generation requests share one batched "
                    "step of the model; each stream gets exactly the text model.generate gives it alone. "
                    "Without MODEL the bundled character model and language identifier are served.")
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="model files (.safetensors, .keras, .h5, .onnx), each served under its file name without "
                        "the extension, or NAME=FILE to choose the name (default: the bundled models, "
                        "char_lstm and langid)")
    p.add_argument("--host", default=d["host"],
                   help=f"address to listen on (default {d['host']}: this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=d["port"], help=f"TCP port (default {d['port']}; 0 = any free port)")
    p.add_argument("--max-batch", type=int, default=d["max_batch"],
                   help=f"rows decoding at once per language model; also the most prompts per request "
                        f"(default {d['max_batch']})")
    p.add_argument("--threads", type=int, default=d["threads"],
                   help=f"threads of each model's batched step (default {d['threads']}: the HTTP side needs a core "
                        "too; results do not depend on it)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every route but /health (default: the "
                        "FASTRNN_API_KEY environment variable; none = no key)")
    p.add_argument("--max-queue", type=int, default=d["max_queue"],
                   help=f"streams (or classify requests) that may wait for a model beyond its free rows; more get "
                        f"429 with Retry-After (default {d['max_queue']})")
    p.add_argument("--max-body-bytes", type=int, default=d["max_body_bytes"],
                   help=f"largest request body; larger ones get 413 (default {d['max_body_bytes']})")
    p.add_argument("--max-prompt-tokens", type=int, default=d["max_prompt_tokens"],
                   help=f"longest prompt, and longest text to classify, in tokens (default {d['max_prompt_tokens']})")
    p.add_argument("--max-tokens", type=int, default=d["max_tokens"],
                   help=f"largest max_tokens a request may ask for (default {d['max_tokens']}); a request without "
                        "max_tokens gets the model's default (200, or its recommended count), at most this")
    p.add_argument("--max-classify-inputs", type=int, default=d["max_classify_inputs"],
                   help=f"texts per classify request (default {d['max_classify_inputs']})")
    p.add_argument("--batch-wait-ms", type=float, default=d["batch_wait_ms"],
                   help=f"classify requests arriving within this many milliseconds of the first are run as one "
                        f"batch (default {d['batch_wait_ms']:g})")
    p.add_argument("--weights", choices=("float32", "float16", "int8", "auto"), default=None,
                   help="weights of the generation step, as `fastrnn generate --weights` (default: float32, or the "
                        "kind the model file was quantized to)")
    p.add_argument("--shutdown-timeout", type=float, default=d["shutdown_timeout"],
                   help=f"on SIGTERM or Ctrl-C, seconds to let the requests in flight finish before they are cut "
                        f"(default {d['shutdown_timeout']:g})")
    p.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"), default="info",
                   help="uvicorn's log level (info: one line per request)")
    p.set_defaults(func=cmd_serve)


def _positive(args, name, minimum=1):
    value = getattr(args, name)
    if value < minimum:
        raise ValueError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")


def load_models(paths):
    """[(name, model)] for the files of ``paths`` (NAME=FILE names one), or the bundled models."""
    from .. import load
    from ..bundled import BUNDLED_CLASSIFIER, BUNDLED_MODEL, bundled_classifier, bundled_model

    if not paths:
        return [(_stem(BUNDLED_MODEL), bundled_model()), (_stem(BUNDLED_CLASSIFIER), bundled_classifier())]
    out = []
    for item in paths:
        name, path = None, item
        if not os.path.exists(item) and "=" in item:
            name, path = item.split("=", 1)
            if not name:
                raise ValueError(f"{item!r}: NAME=FILE needs a name before '='")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such model file: {path}")
        out.append((name or _stem(path), load(path)))
    return out


def _stem(path):
    base = os.path.basename(os.path.normpath(path))
    return base.split(".", 1)[0] if not base.startswith(".") else base


def model_kind(name, model):
    """"generate" or "classify", or ValueError saying why the model can be neither."""
    from ..classify import check_classifier
    from ..generate.plan import generation_plan

    if model.vocabulary is None:
        raise ValueError(f"model {name!r} has no vocabulary: the server reads and writes text (store one with "
                         "`fastrnn convert --vocab FILE`)")
    try:
        generation_plan(model)
        return "generate"
    except ValueError as exc:
        why_not_generate = str(exc)
    try:
        check_classifier(model)
        return "classify"
    except (ValueError, TypeError) as exc:
        why_not_classify = str(exc)
    raise ValueError(f"model {name!r} can neither generate ({why_not_generate}) nor classify ({why_not_classify})")


def _listen(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)  # connections made once the address is printed wait here until uvicorn accepts them
    sock.set_inheritable(True)
    return sock


def cmd_serve(args):
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise ImportError(f"fastrnn serve needs Starlette and uvicorn ({exc.name} is missing): pip install starlette "
                          "uvicorn (or, in a fastrnn checkout, pip install \".[serve]\")") from None
    from ..generate.options import generation_defaults
    from .app import Server, ServedModel, build_app
    from .protocol import Limits
    from .workers import ClassifyWorker, GenerationWorker

    for name in ("max_batch", "threads", "max_body_bytes", "max_prompt_tokens", "max_classify_inputs"):
        _positive(args, name)
    for name in ("max_queue", "max_tokens", "port"):
        _positive(args, name, 0)
    if args.batch_wait_ms < 0 or args.shutdown_timeout < 0:
        raise ValueError("--batch-wait-ms and --shutdown-timeout must be >= 0")
    api_key = args.api_key if args.api_key is not None else os.environ.get("FASTRNN_API_KEY") or None
    limits = Limits(max_body_bytes=args.max_body_bytes, max_prompt_tokens=args.max_prompt_tokens,
                    max_tokens=args.max_tokens, max_prompts=args.max_batch,
                    max_classify_inputs=args.max_classify_inputs)
    server = Server(limits, api_key=api_key)
    created = int(time.time())
    for name, model in load_models(args.models):
        kind = model_kind(name, model)
        if kind == "generate":
            worker = GenerationWorker(name, model, server.deliver, server.metrics, capacity=args.max_batch,
                                      max_queue=args.max_queue, threads=args.threads, weights=args.weights)
            default = min(generation_defaults(model)["max_new_tokens"], args.max_tokens)
        else:
            worker = ClassifyWorker(name, model, server.metrics, max_queue=args.max_queue,
                                    wait_seconds=args.batch_wait_ms / 1000, max_inputs=args.max_classify_inputs,
                                    threads=args.threads)
            default = 0
        worker.warm_up()
        server.add(ServedModel(name, kind, model, worker, created, default))
    sock = _listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    listing = ", ".join(f"{m.name} ({m.kind})" for m in server.models.values())
    print(f"fastrnn serve: {listing} on http://{shown}:{port}", file=sys.stderr, flush=True)
    if api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"fastrnn serve: warning: listening on {args.host} without an API key (--api-key or FASTRNN_API_KEY)",
              file=sys.stderr, flush=True)

    class _Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # SIGTERM / Ctrl-C: new requests get 503 while the others finish
            server.draining = True
            super().handle_exit(sig, frame)

    config = uvicorn.Config(build_app(server), log_level=args.log_level, lifespan="on",
                            timeout_graceful_shutdown=args.shutdown_timeout)
    # uvicorn re-raises the signal that stopped it once it is done, with the handler found at the start:
    # for SIGTERM that is this one, so a graceful stop exits 0 (Ctrl-C still ends in KeyboardInterrupt: 130)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        _Server(config).run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    return 0
