"""The wire format: OpenAI's completions schema (plus fastrnn's top_k and repetition_penalty), the
classify request, the error object, and the limits every request is checked against.

Every check names the field at fault, in OpenAI's error object:
``{"error": {"message": ..., "type": "invalid_request_error", "param": "max_tokens", "code": ...}}``.
Fields of OpenAI's schema that fastrnn cannot honour (n > 1, echo, logprobs, best_of, suffix,
logit_bias, presence/frequency penalties) are refused when set to anything but their neutral value,
never ignored; unknown fields are refused too (a misspelt ``max_token`` would otherwise be
silently dropped). No field names a file: a request picks one of the models the server was
started with, by name.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers

from ..generate.sampling import REPETITION_PENALTY_RANGE

ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
               405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
               500: "server_error", 503: "server_error"}


class APIError(Exception):
    """An error answered as OpenAI's error object with HTTP ``status``."""

    def __init__(self, status, message, param=None, code=None, headers=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self):
        return error_body(self.status, self.message, self.param, self.code)


def error_body(status, message, param=None, code=None):
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


@dataclasses.dataclass
class Limits:
    """The caps a request is checked against (each has a ``fastrnn serve`` flag)."""

    max_body_bytes: int = 1 << 20      # --max-body-bytes: larger bodies get 413
    max_prompt_tokens: int = 4096      # --max-prompt-tokens: per prompt, and per text to classify
    max_tokens: int = 4096             # --max-tokens: the largest max_tokens a request may ask for
    max_prompts: int = 64              # prompts in one completions request (= --max-batch)
    max_stops: int = 4                 # stop sequences per request (OpenAI's limit)
    max_stop_tokens: int = 64          # tokens per stop sequence
    max_classify_inputs: int = 256     # --max-classify-inputs: texts per classify request


def parse_json(body: bytes):
    """The request body as a JSON object (400 naming what is wrong otherwise)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise APIError(400, f"the request body is not UTF-8 text: {exc}", code="invalid_json") from None
    if not text.strip():
        raise APIError(400, "the request body is empty: send a JSON object", code="invalid_json")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                       code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}",
                       code="invalid_json")
    return data


def _bad(param, message):
    return APIError(400, f"{param}: {message}", param=param)


def _integer(data, name, low=None):
    v = data.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(name, f"must be an integer, got {json.dumps(v)}")
    if low is not None and v < low:
        raise _bad(name, f"must be >= {low}, got {v}")
    return v


def _number(data, name):
    v = data.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise _bad(name, f"must be a number, got {json.dumps(v)}")
    return float(v)


def _check_unknown(data, known, where):
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise _bad(unknown[0], f"unknown field of {where} (known: {', '.join(sorted(known))})")


# OpenAI fields fastrnn cannot honour, with their neutral values and what to use instead
_UNSUPPORTED = {
    "n": ((None, 1), "only n=1 is supported: send a list of prompts, or several requests with different seeds"),
    "best_of": ((None, 1), "only best_of=1 is supported"),
    "echo": ((None, False), "echo is not supported: the text returned is the continuation only"),
    "logprobs": ((None,), "logprobs are not supported"),
    "suffix": ((None, ""), "suffix (insertion) is not supported by a left-to-right recurrent model"),
    "logit_bias": ((None, {}), "logit_bias is not supported"),
    "presence_penalty": ((None, 0, 0.0), "presence_penalty is not supported: use repetition_penalty (CTRL style, "
                                         "> 1 discourages repeats)"),
    "frequency_penalty": ((None, 0, 0.0), "frequency_penalty is not supported: use repetition_penalty (CTRL style, "
                                          "> 1 discourages repeats)"),
}
COMPLETION_FIELDS = ("model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "stop",
                     "seed", "stream", "stream_options", "user") + tuple(_UNSUPPORTED)


@dataclasses.dataclass
class CompletionRequest:
    model: object            # the model's name, or None
    prompts: list            # each a str or a list of token ids
    params: dict             # max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop
    stream: bool
    include_usage: bool


def parse_completion(data: dict, limits: Limits) -> CompletionRequest:
    """Check a /v1/completions body (types, ranges, caps) without the model (see check_prompts)."""
    _check_unknown(data, COMPLETION_FIELDS, "a completions request")
    for name, (neutral, why) in _UNSUPPORTED.items():
        if name in data and not any(_same(data[name], v) for v in neutral):
            raise _bad(name, why)
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("model", f"must be a string (a model's name from GET /v1/models), got {json.dumps(model)}")
    if "prompt" not in data or data["prompt"] is None:
        raise _bad("prompt", "required: a string, a list of strings, a list of token ids or a list of those")
    prompts = _prompts(data["prompt"])
    if len(prompts) > limits.max_prompts:
        raise _bad("prompt", f"{len(prompts)} prompts in one request; at most {limits.max_prompts} (--max-batch)")
    max_tokens = _integer(data, "max_tokens", 0)
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise _bad("max_tokens", f"{max_tokens} is over this server's cap of {limits.max_tokens} (--max-tokens)")
    temperature = _number(data, "temperature")
    if temperature is not None and temperature < 0:
        raise _bad("temperature", f"must be >= 0 (0 = greedy), got {temperature}")
    top_p = _number(data, "top_p")
    if top_p is not None and not 0 < top_p <= 1:
        raise _bad("top_p", f"must be in (0, 1] (1 = off), got {top_p}")
    top_k = _integer(data, "top_k", 0)
    penalty = _number(data, "repetition_penalty")
    lo, hi = REPETITION_PENALTY_RANGE
    if penalty is not None and not lo <= penalty <= hi:
        raise _bad("repetition_penalty", f"must be in [{lo}, {hi}] (1 = off), got {penalty}")
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _bad("seed", f"must be an integer, got {json.dumps(seed)}")
    stop = _stop(data.get("stop"), limits)
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream", f"must be true or false, got {json.dumps(stream)}")
    options = data.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise _bad("stream_options", 'must be an object {"include_usage": true|false}')
        include_usage = options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise _bad("stream_options", "include_usage must be true or false")
        if not stream:
            raise _bad("stream_options", "only allowed with stream: true")
    user = data.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("user", "must be a string")
    params = {"max_new_tokens": max_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p,
              "repetition_penalty": penalty, "seed": seed, "stop": stop}
    return CompletionRequest(model, prompts, params, bool(stream), include_usage)


def _same(value, neutral):
    """value is neutral, in JSON's terms (true is not 1)"""
    return value is neutral or (type(value) is type(neutral) and value == neutral)


def _is_id_list(x):
    return isinstance(x, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in x)


def _prompts(prompt):
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list):
        if not prompt:
            raise _bad("prompt", "an empty list: give at least one prompt")
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if _is_id_list(prompt):
            return [prompt]
        if all(_is_id_list(p) for p in prompt):
            return list(prompt)
    raise _bad("prompt", "must be a string, a list of strings, a list of token ids or a list of lists of token ids")


def _stop(stop, limits):
    if stop is None:
        return None
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise _bad("stop", f"must be a string or a list of strings, got {json.dumps(stop)}")
    if len(items) > limits.max_stops:
        raise _bad("stop", f"{len(items)} stop sequences; at most {limits.max_stops}")
    for s in items:
        if s == "":
            raise _bad("stop", "an empty stop string would stop at once; remove it")
    return items


def check_prompt_length(prompt, index, count, vocabulary, limits: Limits):
    """400 when a prompt has more than max_prompt_tokens tokens."""
    n = len(prompt) if isinstance(prompt, list) else len(vocabulary.split(prompt))
    if n > limits.max_prompt_tokens:
        where = f"prompt[{index}]" if count > 1 else "prompt"
        raise APIError(400, f"{where}: {n} tokens, over this server's cap of {limits.max_prompt_tokens} "
                            "(--max-prompt-tokens)", param="prompt")


def stop_too_long(stream, limits: Limits):
    """400 when a stop sequence has more than max_stop_tokens tokens (checked on the tokens, of
    every stop the model can produce, one-token ones included)."""
    if stream.stops is not None and any(len(s) > limits.max_stop_tokens for s in stream.stops.sequences):
        raise _bad("stop", f"a stop sequence is longer than {limits.max_stop_tokens} tokens")


def value_error_param(message):
    """The request field a ValueError of fastrnn.generate is about."""
    for field, names in (("max_tokens", ("max_new_tokens",)), ("temperature", ("temperature",)),
                         ("top_k", ("top_k",)), ("top_p", ("top_p",)),
                         ("repetition_penalty", ("repetition_penalty",)), ("seed", ("seed",)),
                         ("stop", ("stop", "an empty stop"))):
        if message.startswith(names):
            return field
    return "prompt"


CLASSIFY_FIELDS = ("model", "input", "user")


@dataclasses.dataclass
class ClassifyRequest:
    model: object
    texts: list


def parse_classify(data: dict, limits: Limits) -> ClassifyRequest:
    _check_unknown(data, CLASSIFY_FIELDS, "a classify request")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("model", f"must be a string (a model's name from GET /v1/models), got {json.dumps(model)}")
    if "input" not in data or data["input"] is None:
        raise _bad("input", "required: a string or a list of strings")
    texts = data["input"]
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise _bad("input", "must be a string or a list of strings")
    if not texts:
        raise _bad("input", "an empty list: give at least one text")
    if len(texts) > limits.max_classify_inputs:
        raise _bad("input", f"{len(texts)} texts in one request; at most {limits.max_classify_inputs} "
                            "(--max-classify-inputs)")
    user = data.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("user", "must be a string")
    return ClassifyRequest(model, texts)


def dumps(obj) -> str:
    """Compact JSON, non-ASCII text (Hangul) as UTF-8, not escaped."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
