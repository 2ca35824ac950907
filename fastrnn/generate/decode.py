"""``generate``: sampling (fastrnn.generate.run) or beam search (fastrnn.generate.beam), and
GenerationMixin, which gives fastrnn.Model its ``generate`` and ``session`` methods (this module
never imports fastrnn.model: Model inherits the mixin, a layer above)."""
from __future__ import annotations

from .beam import _check, beam_search
from .options import model_or_default
from .run import sample
from .session import Session


def generate(model, prompt, max_new_tokens=None, temperature=None, top_k=None, top_p=None,
             repetition_penalty=None, seed=None, stop=None, stream=False, initial_state=None, backend=None,
             weights=None, threads=None, num_beams=1, length_penalty=1.0):
    """Sample a continuation of ``prompt`` from ``model`` (None = the bundled character model).

    Parameters
    ----------
    prompt : str (encoded with the model's vocabulary), list/1-D array of token ids, or a list of
        either (a batch, decoded together in lockstep; rows may have different lengths).
    max_new_tokens : int >= 0, tokens to generate per row (fewer when a stop sequence ends it).
    temperature : float >= 0, 0 = greedy. top_k : int >= 0 (0 = off). top_p : float in (0, 1]
        (1 = off). repetition_penalty : float in [0.01, 100] (1 = off; CTRL style, over prompt and
        output). Each of these five left at None takes the model's recommended value (metadata
        "generation"), else GENERATION_DEFAULTS: 200 tokens, temperature 0.8, the rest off
        (the same defaults as `fastrnn generate`).
    seed : int (the same generator for every row), list of ints (one per row) or None (random).
    stop : str, id, or a list of strings / ids / id lists; the stop text is not kept.
    stream : False -> the result; True -> an iterator of pieces (per row lists for a batch)
        whose concatenation is the result for the same seed.
    initial_state : recurrent states as in Model.predict (batch = number of prompts), or None.
        For a model with inputs besides the tokens (the Keras inference decoder
        ``Model([dec_in, h_in, c_in], [y, h, c])``, a captioning model's image features): their
        values, a list in input order or a dict by name, one row per prompt; they give the
        recurrent layers their initial states (fastrnn.generate.stepwise).
    backend : "cython" | "numba" | "numpy" for this call (default: the current backend).
    weights : "float32" (exact), "float16", "int8" or "auto" (default: "float32", or the kind
        of a quantized model / file): the matrices read at every step rounded once (half / a
        quarter of the bytes; logits change slightly, see GenerationPlan and the README's
        accuracy note). int8 is faster at small batch; float16 can be slower than float32
        where the weights fit in cache; "auto" measures float16 against float32 once per model.
    threads : threads for a batch (blocks of rows run in parallel; None = fastrnn's setting).
        The result is the same for any thread count.

    num_beams : 1 (sampling as above) or more: beam search with that many beams per prompt,
        deterministic; sampling options and seed do not apply (see fastrnn.generate.beam).
    length_penalty : beam search scores sum(log-probs) / length ** length_penalty.

    Returns the continuation (without the prompt) in the prompt's kind: str, list of ids or
    array; a list of those for a batch.
    """
    model = model_or_default(model)
    num_beams, length_penalty = _check(num_beams, length_penalty)
    if num_beams > 1:
        if stream:
            raise ValueError("stream=True is not available with num_beams > 1 (the best beam is known at the end)")
        return beam_search(model, prompt, max_new_tokens=max_new_tokens, num_beams=num_beams,
                           length_penalty=length_penalty, stop=stop, initial_state=initial_state, backend=backend,
                           weights=weights, threads=threads)
    return sample(model, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                  repetition_penalty=repetition_penalty, seed=seed, stop=stop, stream=stream,
                  initial_state=initial_state, backend=backend, weights=weights, threads=threads)


class GenerationMixin:
    """What fastrnn.Model gets from generation: ``generate`` and ``session``."""

    def generate(self, prompt, max_new_tokens=None, temperature=None, top_k=None, top_p=None,
                 repetition_penalty=None, seed=None, stop=None, stream=False, initial_state=None, backend=None,
                 weights=None, threads=None, num_beams=1, length_penalty=1.0):
        """Sample a continuation of ``prompt`` (str, token ids, or a list of either for a batch),
        or with ``num_beams`` > 1 decode it by beam search (fastrnn.generate.beam).

        Parameters left at None take the model's recommended values (metadata "generation"), else
        fastrnn.generate.GENERATION_DEFAULTS (200 tokens, temperature 0.8), as `fastrnn generate`
        does. Every parameter is documented in fastrnn.generate.generate."""
        return generate(self, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, repetition_penalty=repetition_penalty, seed=seed, stop=stop, stream=stream,
                        initial_state=initial_state, backend=backend, weights=weights, threads=threads,
                        num_beams=num_beams, length_penalty=length_penalty)

    def session(self, seed=None, initial_state=None, temperature=None, top_k=None, top_p=None,
                repetition_penalty=None, backend=None, weights=None):
        """A stateful token-by-token session; see fastrnn.generate.Session."""
        return Session(self, seed=seed, initial_state=initial_state, temperature=temperature, top_k=top_k,
                       top_p=top_p, repetition_penalty=repetition_penalty, backend=backend, weights=weights)
