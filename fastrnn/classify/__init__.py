"""Classification of many inputs: one label per text (or id sequence), lazily, in input order.

    model = fastrnn.load("sentiment.safetensors")       # any model whose output is per sequence
    for r in model.classify(open("reviews.txt", encoding="utf-8")):
        print(r.label, r.probabilities)

    fastrnn classify reviews.txt                          # the command line

- classifier.py  classify(), Classification, labels_of...; ClassifierMixin: Model.classify
- cli.py         ``fastrnn classify`` (a top layer: it loads models)

This ``__init__`` re-exports their names (``fastrnn.classify.<name>``) and the bundled language
identifier (fastrnn.bundled).
"""
from __future__ import annotations

from ..bundled import BUNDLED_CLASSIFIER, BUNDLED_UNKNOWN_THRESHOLD, bundled_classifier
from .classifier import (DEFAULT_BATCH_SIZE, DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_LENGTH, UNKNOWN_LABEL,
                         Classification, ClassifierMixin, _batches, _classify_iter, _encoder, _Head, _positive,
                         _text_input, _unknown_fraction, check_classifier, class_count, classify, labels_of,
                         probabilities_from_output, unknown_threshold_of)
from .cli import Progress, _remember, add_cli, cmd_classify
