"""The models shipped inside the package (fastrnn/data), loaded once per process.

A top layer (fastrnn/__init__.py): loading a file builds a fastrnn.Model. Re-exported as
fastrnn.generate.bundled_model and fastrnn.classify.bundled_classifier, whose packages import
this module when Model imports their mixins: so it imports fastrnn only inside the functions.
"""
from __future__ import annotations

import os

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
BUNDLED_MODEL = os.path.join(DATA_DIR, "char_lstm.safetensors")
BUNDLED_CLASSIFIER = os.path.join(DATA_DIR, "langid.safetensors")
# The bundled language identifier answers "unknown" when more than half of a text's characters
# are outside its vocabulary (see bundled_classifier); other models when their metadata says so.
BUNDLED_UNKNOWN_THRESHOLD = 0.5


def bundled_model():
    """The character-level LSTM shipped with fastrnn (trained by tools/train_char_model.py on
    the CPython standard library sources), loaded once."""
    from . import load_bundled

    return load_bundled(BUNDLED_MODEL, "character model")


def bundled_classifier():
    """The language-identification GRU shipped with fastrnn (trained by tools/train_langid.py on
    the Debian word lists), loaded once. It answers "unknown" for a text more than half of whose
    characters are outside its vocabulary (Korean, Japanese, Cyrillic, only spaces, empty): its
    metadata "unknown_threshold" is 0.5 (set here for the shipped file, written by the
    training script for new ones)."""
    from . import load_bundled

    model = load_bundled(BUNDLED_CLASSIFIER, "classifier")
    model.metadata.setdefault("unknown_threshold", BUNDLED_UNKNOWN_THRESHOLD)
    return model
