"""The sequence-to-sequence recipe of the README: from_torch(seq2seq.encoder) and
from_torch(seq2seq.decoder), the encoder's final state as the decoder's initial_state, greedy
and beam decoding, against a decoding loop written in torch."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import fastrnn
from conftest import FRAMEWORK_ATOL, FRAMEWORK_RTOL, assert_close

torch.set_num_threads(1)
SOS, EOS = 0, 1


class Encoder(nn.Module):
    def __init__(self, cell, vocab=17, emb=6, hidden=10):
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb)
        self.rnn = cell(emb, hidden, num_layers=2, batch_first=True)

    def forward(self, src):
        return self.rnn(self.embedding(src))  # (outputs, final state)


class Decoder(nn.Module):
    def __init__(self, cell, vocab=13, emb=5, hidden=10):
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb)
        self.rnn = cell(emb, hidden, num_layers=2, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, tokens, state):
        y, state = self.rnn(self.embedding(tokens), state)
        return self.out(y), state


class Seq2Seq(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.encoder = Encoder(cell)
        self.decoder = Decoder(cell)


def make(cell, seed):
    torch.manual_seed(seed)
    model = Seq2Seq(cell).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)  # livelier distributions than the default initialisation
    return model


def torch_greedy(s2s, src, max_new, stop=None):
    """The decoding loop a PyTorch user writes: one token at a time from the encoder's state."""
    results = []
    with torch.no_grad():
        for row in src:
            _, state = s2s.encoder(torch.from_numpy(row[None]))
            tok, out = SOS, []
            for _ in range(max_new):
                logits, state = s2s.decoder(torch.tensor([[tok]]), state)
                tok = int(logits[0, -1].argmax())
                if tok == stop:
                    break
                out.append(tok)
            results.append(out)
    return results


def to_fastrnn_state(cell, state):
    """torch's (num_layers, B, H) final state -> fastrnn's one entry per recurrent layer."""
    if cell is nn.LSTM:
        h, c = state
        return [(h[k:k + 1].numpy(), c[k:k + 1].numpy()) for k in range(h.shape[0])]
    return [state[k:k + 1].numpy() for k in range(state.shape[0])]


@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM], ids=["gru", "lstm"])
def test_seq2seq_recipe_greedy_equals_torch_loop(backend, cell):
    s2s = make(cell, 1 if cell is nn.GRU else 3)
    encoder = fastrnn.from_torch(s2s.encoder)
    decoder = fastrnn.from_torch(s2s.decoder)
    src = np.random.default_rng(1).integers(2, 17, (4, 7))
    # the encoder's final state, as fastrnn computes it, equals torch's
    _, state = encoder.predict(src, return_state=True, backend=backend)
    with torch.no_grad():
        _, want_state = s2s.encoder(torch.from_numpy(src))
    for got, want in zip(state, to_fastrnn_state(cell, want_state)):
        for g, w in zip(got if cell is nn.LSTM else [got], want if cell is nn.LSTM else [want]):
            assert_close(g, w, FRAMEWORK_ATOL, FRAMEWORK_RTOL)
    free = torch_greedy(s2s, src, 10)
    # a token the first row really produces (and not before): it stops there
    cut = next(i for i in range(1, 10) if free[0][i] not in free[0][:i])
    stop = free[0][cut]
    want = torch_greedy(s2s, src, 10, stop=stop)
    got = decoder.generate([[SOS]] * len(src), initial_state=state, temperature=0, max_new_tokens=10,
                           stop=stop, backend=backend)
    assert got == want
    assert len(got[0]) == cut and len({len(r) for r in got}) > 1  # rows stop at different steps


def torch_beam_scores(s2s, row, seq):
    """Sum of log-probabilities of ``seq`` after SOS, from the torch modules."""
    with torch.no_grad():
        _, state = s2s.encoder(torch.from_numpy(row[None]))
        logits, _ = s2s.decoder(torch.tensor([[SOS] + list(seq)]), state)
        logp = torch.log_softmax(logits[0].double(), dim=-1)
    return sum(float(logp[i, t]) for i, t in enumerate(seq))


def test_seq2seq_beam_search_from_encoder_state():
    s2s = make(nn.GRU, 2)
    encoder = fastrnn.from_torch(s2s.encoder)
    decoder = fastrnn.from_torch(s2s.decoder)
    src = np.random.default_rng(2).integers(2, 17, (3, 6))
    _, state = encoder.predict(src, return_state=True)
    greedy = decoder.generate([[SOS]] * 3, initial_state=state, temperature=0, max_new_tokens=6)
    beams = decoder.generate([[SOS]] * 3, initial_state=state, num_beams=4, length_penalty=0.0, max_new_tokens=6)
    assert greedy == torch_greedy(s2s, src, 6)
    # without stops and length_penalty=0, the best beam is at least as likely as greedy (torch's scores)
    better = []
    for row, g, b in zip(src, greedy, beams):
        assert len(b) == 6
        assert torch_beam_scores(s2s, row, b) >= torch_beam_scores(s2s, row, g) - 1e-6
        better.append(torch_beam_scores(s2s, row, b) > torch_beam_scores(s2s, row, g) + 1e-3)
    assert any(better)  # the beams found something greedy missed
    # one beam is greedy decoding
    assert decoder.generate([[SOS]] * 3, initial_state=state, num_beams=1, temperature=0, max_new_tokens=6) == greedy
