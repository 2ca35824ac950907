"""Text generation: sample continuations of a prompt from a recurrent language model.

    import fastrnn
    from fastrnn.generate import bundled_model
    model = bundled_model()                       # the character LSTM shipped in fastrnn/data
    model.generate("def ", max_new_tokens=200, temperature=0.8, seed=1)
    for piece in model.generate("def ", stream=True, seed=1):
        print(piece, end="", flush=True)
    model.generate(["def ", "class "], seed=1)    # a batch, decoded together in lockstep
    s = model.session(seed=1); s.feed("import "); s.probabilities(); s.sample(); s.generate(20)

The package, by layer (each module imports only those listed before it, never fastrnn.model):

- sampling.py  the NumPy reference: SplitMix64, logit processing, the sampler (Sampling)
- options.py   the arguments: defaults (GENERATION_DEFAULTS), prompts, seeds, stop sequences
- engines.py   one loop per backend (NumPy reference, Cython, Numba) on shared row buffers
- job.py       one run of a loop over B rows: output window, stops, streaming, GenerationError
- stepwise.py  the plan of causal graphs that are not the compiled chain (one graph step per token)
- plan.py      the model laid out for the compiled loop (GenerationPlan), weight kinds
- run.py       the sampling run over prompts; default_weights ("auto"), check_arguments
- beam.py      beam search (num_beams > 1)
- session.py   Session: token-by-token generation with state
- batch_session.py  BatchSession: continuous batching, streams joining and leaving one batch at any step
- decode.py    generate(), and GenerationMixin: Model.generate and Model.session
- cli.py       ``fastrnn generate`` (a top layer: it loads models; so does bundled_model)

This ``__init__`` re-exports their names, so ``fastrnn.generate.<name>`` keeps working, and
plugs the bundled model in as the default model (fastrnn.generate.options.DEFAULT_MODEL).
"""
from __future__ import annotations

# the names of the package, as fastrnn.generate.<name> (the module generate.py had them all)
from ..bundled import BUNDLED_MODEL, bundled_model
from . import options
from .batch_session import BatchSession, BatchStream
from .beam import beam_search
from .cli import add_cli, cmd_generate
from .decode import GenerationMixin, generate
from .engines import (BAD_LOGITS, FINISHED, HAS_LOGITS, LEN, LIMIT, NOUT, POS, STATUS_COLS, STOP_LEN,
                      CompiledEngine, NumpyEngine, NumpyRunner, Rows, _ENGINE_MODULES, _engine_errors, _engines,
                      _load_engine, available_engines, get_engine, match_stop, row_blocks, stops_list)
from .job import GenerationError, _Formatter, _Job, _StopMatcher, _stream_pieces
from .options import (GENERATION_DEFAULTS, _count, _is_int, _prompt_rows, _seeds, _stops, _with_defaults,
                      generation_defaults, model_or_default)
from .plan import (WEIGHT_KINDS, GenerationPlan, LayerPlan, Matrix, _build_generation_plan, _plan_lock,
                   generation_plan, to_half, to_int8)
from .run import AUTO_MARGIN, _measure_auto, check_arguments, default_weights, sample
from .sampling import (GOLDEN_GAMMA, MASK64, REPETITION_PENALTY_RANGE, Sampling, f32, probabilities,
                       process_logits, sample_processed, sample_token, splitmix64)
from .session import Session, _locked

options.DEFAULT_MODEL = bundled_model  # see options.py: the model used when none is given
