"""The standard workloads' models (docs/performance.md), defined once for every benchmark script.

PyTorch modules with random weights (speed does not depend on their values); fastrnn loads them
with ``fastrnn.from_torch``. torch is optional: without it the classes exist but cannot be built.
"""
try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

VOCAB, EMB = 96, 64  # the char model: Embedding(96, 64)
CLS_VOCAB, CLS_EMB, CLS_HIDDEN = 20000, 128, 128

_Module = torch.nn.Module if torch is not None else object


class CharLSTM(_Module):
    """gen256 / gen512 / batchgen: Embedding(96, 64) -> LSTM(H, 2 layers) -> Linear(96); one
    call carries the state: (ids (B, T), h0, c0) -> (logits (B, T, 96), h, c)."""

    def __init__(self, hidden):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, EMB)
        self.lstm = torch.nn.LSTM(EMB, hidden, num_layers=2, batch_first=True)
        self.head = torch.nn.Linear(hidden, VOCAB)

    def forward(self, ids, h, c):
        out, (h, c) = self.lstm(self.embed(ids), (h, c))
        return self.head(out), h, c


class ClsModel(_Module):
    """cls: Embedding(20000, 128) -> BiLSTM(128) -> Linear(2) -> softmax over both final states."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(CLS_VOCAB, CLS_EMB)
        self.lstm = torch.nn.LSTM(CLS_EMB, CLS_HIDDEN, batch_first=True, bidirectional=True)
        self.head = torch.nn.Linear(2 * CLS_HIDDEN, 2)

    def forward(self, ids):
        _, (h, _) = self.lstm(self.embed(ids))
        return torch.softmax(self.head(torch.cat([h[-2], h[-1]], dim=1)), dim=1)
