"""``export_c``: a fastrnn Model as ``NAME.h`` + ``NAME.c`` (+ ``main.c``), dependency-free C99."""
from __future__ import annotations

import os

from .chain import ExportError, read_chain
from .ctext import check_name, identifier
from .text import code_table, encoder_problem
from .writer import Writer

WEIGHTS = ("float32", "int8")
DEFAULT_MAX_STEPS = 256
CLASSIFY_MAX_LENGTH = 10_000  # fastrnn.classify's default max_length, kept by the example program


def resolve_weights(model, weights):
    """weights=None -> the model's own kind ("int8" for an int8 model, else "float32")."""
    kind = (model.metadata or {}).get("quantized")
    if kind == "bfloat16":
        raise ExportError("export-c: this model computes with bfloat16 products (activations rounded to bfloat16), "
                          "which the C does not reproduce: export the float32 model, or pass weights='int8'")
    if weights is None:
        return "int8" if kind == "int8" else "float32"
    if weights not in WEIGHTS:
        raise ValueError(f"export-c: weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if weights == "float32" and kind == "int8":
        raise ExportError("export-c: this model computes with int8 products (it was quantized to int8); float32 C "
                          "would give other numbers than Model.predict: export it with weights='int8'")
    return weights


def generation_info(model, chain):
    """How the model generates (fastrnn.generate's own plans decide), or None."""
    if not (chain.causal and chain.output_per_step):
        return None
    from ..generate.plan import GenerationPlan
    from ..generate.stepwise import StepGraphPlan

    try:
        plan = GenerationPlan(model, "float32")
        return {"kind": "chain", "vocab_size": plan.vocab_size, "table_rows": plan.table_rows,
                "head": plan.dense.activation}
    except ValueError:
        pass
    try:
        plan = StepGraphPlan(model)
    except ValueError:
        return None
    return {"kind": "step", "vocab_size": plan.vocab_size, "table_rows": plan.table_rows, "head": plan.output_kind}


def classifier_info(model, chain):
    """Labels, head activation and unknown threshold of a classifier (fastrnn.classify), or None."""
    if chain.output_per_step:
        return None
    from ..classify.classifier import check_classifier, labels_of, unknown_threshold_of

    try:
        head = check_classifier(model)
        labels = labels_of(model)
        threshold = unknown_threshold_of(model)
    except (ValueError, TypeError):
        return None
    return {"labels": labels, "activation": head.activation, "outputs": head.output_size,
            "unknown_threshold": threshold}


def export_c(model, out_dir, name=None, weights=None, example=False, max_steps=None):
    """Write ``model`` as dependency-free C99: ``out_dir/NAME.h`` and ``out_dir/NAME.c`` (and
    ``out_dir/main.c`` with ``example=True``). Returns the paths written.

    model : a fastrnn.Model whose execution graph is a chain of the layers fastrnn.cexport.chain
        lists (anything else raises ExportError, a ValueError, naming the node and its layer).
    name : a C identifier prefixing the files and every function (default: the model's name).
    weights : "float32" (the model's values) or "int8" (fastrnn's int8 rule and int8 products, as
        ``model.quantize("int8")`` computes); default: the model's own kind.
    example : also write main.c: text generation for a character model, classification of stdin
        lines for a classifier (both need a character vocabulary).
    max_steps : the longest sequence ``NAME_predict`` takes for a model with a layer that runs
        backward in time (default: the model's fixed input length, else 256; -DNAME_MAX_STEPS=N
        changes it when compiling).
    """
    if not hasattr(model, "plan") or not hasattr(model, "graph"):
        raise TypeError(f"export_c needs a fastrnn.Model, got {type(model).__name__}")
    weights = resolve_weights(model, weights)
    name = check_name(name if name is not None else identifier(model.name))
    is_int8 = (model.metadata or {}).get("quantized") == "int8"
    runs = model if weights == "float32" or is_int8 else model.quantize("int8")  # the model the C computes
    chain = read_chain(runs)
    if max_steps is None:
        max_steps = chain.fixed_steps or DEFAULT_MAX_STEPS
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"export-c: max_steps must be an integer >= 1, got {max_steps!r}")
    generation = generation_info(model, chain)
    classifier = classifier_info(model, chain)
    vocab = model.vocabulary
    problem = encoder_problem(vocab)
    table = code_table(vocab) if problem is None else None
    main = None
    if example:
        if (model.metadata or {}).get("text_input"):
            raise ExportError("export-c --example: this model pads or cuts its texts to a fixed length (metadata "
                              "'text_input', a Keras Tokenizer's pad_sequences), which the example program does not "
                              "do; use the library (NAME_encode, NAME_predict) and pad as in training")
        from .example import classifier_main, generator_main

        if generation is not None and table is not None:
            main = generator_main(name)
        elif classifier is not None and table is not None:
            main = classifier_main(name, classifier["activation"], classifier["outputs"],
                                   classifier["unknown_threshold"], CLASSIFY_MAX_LENGTH)
        else:
            if problem is not None:
                why = f"it reads no text: {problem}"
            else:
                why = ("it neither generates (a causal chain whose output at every step is over the vocabulary) nor "
                       "classifies (a final output of classes)")
            raise ExportError(f"export-c --example: the example program generates text or classifies lines, and "
                              f"model {model.name!r} cannot be used for either: {why}")
    writer = Writer(runs, chain, name, weights, max_steps, generation=generation, classifier=classifier, table=table,
                    source=model.name)
    header, source = writer.build()
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for filename, text in ((f"{name}.h", header), (f"{name}.c", source), ("main.c", main)):
        if text is None:
            continue
        path = os.path.join(out_dir, filename)
        with open(path, "w", encoding="ascii", newline="\n") as f:
            f.write(text)
        paths.append(path)
    return paths
