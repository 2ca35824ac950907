"""Generation of one row with the hidden units split across threads (generate_core.h,
gen_run_split): the same tokens as one thread, for every cell, both GRU reset variants, sampling
options, stops and streaming; and the cases that must not split."""
import pytest
import torch
from torch import nn

import fastrnn
from conftest import require
from fastrnn.generate import generation_plan, get_engine

require("fastrnn.kernels._cykernels")  # the C kernels (checked_kernels.sh also runs without them)

VOCAB = fastrnn.Vocabulary(list("abcdefghij klmnopqrstuvwxyz.,\n가나다라"), level="char")


def char_model(cell, hidden, layers=2, gru_reset_after=True, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential()
    net.embedding = nn.Embedding(len(VOCAB), 24)
    if cell == "rnn":
        net.rnn = nn.RNN(24, hidden, num_layers=layers, batch_first=True)
    else:
        net.rnn = getattr(nn, cell.upper())(24, hidden, num_layers=layers, batch_first=True)
    net.fc = nn.Linear(hidden, len(VOCAB))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(2.0)  # livelier distributions than the default init: sampled paths diverge fast
    model = fastrnn.from_torch(net.eval(), vocabulary=VOCAB)
    if cell == "gru" and not gru_reset_after:
        for layer in model.recurrent_layers:
            layer.linear_before_reset = False
    return model


@pytest.mark.parametrize("cell,hidden,reset_after", [("lstm", 64, True), ("lstm", 160, True), ("gru", 96, True),
                                                      ("gru", 96, False), ("rnn", 128, True)])
@pytest.mark.parametrize("threads", [2, 3])
def test_split_generation_equals_one_thread(cell, hidden, reset_after, threads):
    model = char_model(cell, hidden, gru_reset_after=reset_after)
    assert get_engine("cython").split_parts(generation_plan(model), 1, threads) > 1
    for kw in (dict(temperature=0), dict(temperature=1.0, seed=5), dict(temperature=0.8, top_k=5, top_p=0.9, seed=9,
                                                                          repetition_penalty=1.3)):
        one = model.generate("abc 가", max_new_tokens=120, threads=1, backend="cython", **kw)
        many = model.generate("abc 가", max_new_tokens=120, threads=threads, backend="cython", **kw)
        assert many == one, kw
    stream = "".join(model.generate("ab", max_new_tokens=60, seed=2, stream=True, threads=threads, stop="z"))
    assert stream == model.generate("ab", max_new_tokens=60, seed=2, threads=1, stop="z")


def test_bundled_model_splits_and_agrees():
    from fastrnn.generate import bundled_model

    model = bundled_model()
    assert get_engine("cython").split_parts(generation_plan(model), 1, 2) == 2
    assert model.generate("def ", max_new_tokens=200, seed=1, threads=2) == \
        model.generate("def ", max_new_tokens=200, seed=1, threads=1)


def test_no_split_for_batches_small_or_odd_layers_and_reduced_weights():
    engine = get_engine("cython")
    assert engine.split_parts(generation_plan(char_model("lstm", 64)), 2, 2) == 1  # a batch splits by rows
    assert engine.split_parts(generation_plan(char_model("lstm", 48)), 1, 2) == 1  # H < 64
    assert engine.split_parts(generation_plan(char_model("gru", 72)), 1, 2) == 1  # H not a multiple of 16
    assert engine.split_parts(generation_plan(char_model("lstm", 64), "int8"), 1, 2) == 1
    assert engine.split_parts(generation_plan(char_model("lstm", 64)), 1, 1) == 1
