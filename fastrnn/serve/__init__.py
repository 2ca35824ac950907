"""``fastrnn serve``: an HTTP server for language models and classifiers (the ``serve`` extra).

    fastrnn serve                        # the bundled models on http://127.0.0.1:8000
    fastrnn serve lm.safetensors reviews.safetensors --max-batch 64 --api-key KEY

OpenAI's completions API (so every OpenAI client library works), streamed as server-sent events
or not; concurrent requests share one batched step of the model (continuous batching, the
step engine is fastrnn.generate.batch_session), and each stream gets exactly the text
``model.generate`` gives it alone. Also a classify endpoint batching the requests that arrive
together, /health, and Prometheus /metrics. The stack: Starlette (routing, requests, streaming
responses) on uvicorn (the ASGI server), both small, widely used and actively maintained
(docs/serving.md says more).

The package, by layer (each module imports only those listed before it; nothing in fastrnn
imports this package but fastrnn/cli.py, which adds the subcommand):

- metrics.py   Prometheus counters, gauges and histograms, rendered as text
- protocol.py  the wire format: OpenAI's schema, the classify request, errors, limits
- workers.py   the threads that compute: GenerationWorker (the batch loop), ClassifyWorker
- app.py       the Starlette application: routes, authentication, streaming, back-pressure
- cli.py       ``fastrnn serve``: loads the models, runs uvicorn, stops gracefully on SIGTERM

Only cli.py is imported by ``fastrnn`` (to build the command line); it imports Starlette and
uvicorn when the command runs, so ``fastrnn --help`` works without the extra.
"""
from __future__ import annotations

from .cli import add_cli, cmd_serve

__all__ = ["add_cli", "cmd_serve"]
