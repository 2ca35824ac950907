"""Issue 26: the first hour, round two (what a new user hit on a fresh clone). One section per item
of the issue; item 1 (ONNX files from PyTorch's default dynamo exporter) is tested where every
exported model is, over both exporters: tests/test_onnx*.py. The documentation's own examples
run in tests/test_readme.py."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastrnn
from test_first_hour import ROOT, assert_one_line_error, fastrnn_cli, pyproject


class WordClassifier(torch.nn.Module):
    def __init__(self, vocab, classes=2):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, 8)
        self.rnn = torch.nn.GRU(8, 8, batch_first=True)
        self.fc = torch.nn.Linear(8, classes)


WORDS = ["<pad>", "<OOV>", "영화", "정말", "재밌어요", "시간", "낭비"]


def word_classifier(unk=1, maxlen=30, seed=0):
    """A Keras-style text classifier: word ids with an out-of-vocabulary id, padded to maxlen."""
    torch.manual_seed(seed)
    model = fastrnn.from_torch(WordClassifier(len(WORDS)).eval(), return_sequences=False, activation="softmax",
                               vocabulary=fastrnn.Vocabulary(WORDS, level="word", unk=unk))
    if maxlen:
        model.metadata["text_input"] = {"padding": "pre", "truncating": "pre", "maxlen": maxlen}
    return model


# -- 2. unknown_fraction counts the text's tokens, not the padding to maxlen -------------------------

def test_unknown_fraction_divides_by_the_texts_tokens_not_maxlen():
    model = word_classifier()
    texts = ["영화 정말 재밌어요 전혀", "전혀 아니 별로", "영화 시간 낭비", ""]
    r = list(model.classify(texts, unknown_threshold=0.5))
    assert [x.unknown_fraction for x in r] == [0.25, 1.0, 0.0, 1.0]
    assert [x.label == "unknown" for x in r] == [False, True, False, True]
    # the same fractions without maxlen: padding never counted
    plain = list(word_classifier(maxlen=None).classify(texts))
    assert [x.unknown_fraction for x in plain] == [x.unknown_fraction for x in r]
    # token ids given directly: their own length too
    assert next(iter(model.classify([[2, 1, 1, 3]]))).unknown_fraction == 0.5
