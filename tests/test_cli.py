"""The fastrnn command line: summary and convert (generate/classify have their own tests)."""
import subprocess
import sys

import numpy as np
import torch

import fastrnn
from conftest import FRAMEWORK_ATOL, assert_close


def run_cli(*args, cwd, stdin=None):
    return subprocess.run([sys.executable, "-m", "fastrnn.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, input=stdin, timeout=300)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding(11, 4)
        self.lstm = torch.nn.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True)
        self.fc = torch.nn.Linear(12, 11)

    def forward(self, ids):
        return self.fc(self.lstm(self.embedding(ids))[0])


def test_convert_state_dict_then_summary(tmp_path):
    torch.manual_seed(0)
    net = Net().eval()
    torch.save(net.state_dict(), tmp_path / "net.pt")
    (tmp_path / "vocab.txt").write_text("\n".join("가나다라마바사아자차카"), encoding="utf-8")
    out = run_cli("convert", "net.pt", "net.safetensors", "--cell", "lstm", "--vocab", "vocab.txt", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    model = fastrnn.load(tmp_path / "net.safetensors")
    assert model.vocabulary.tokens[0] == "가" and len(model.vocabulary) == 11
    ids = np.random.default_rng(0).integers(0, 11, (2, 5))
    with torch.no_grad():
        want = net(torch.from_numpy(ids)).numpy()
    assert_close(model.predict(ids), want, FRAMEWORK_ATOL)

    out = run_cli("summary", "net.safetensors", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"Total params: {sum(p.numel() for p in net.parameters()):,}" in out.stdout
    assert "Bidirectional(LSTM)" in out.stdout


def test_convert_state_dict_needs_cell(tmp_path):
    torch.save(torch.nn.GRU(2, 3).state_dict(), tmp_path / "g.pt")
    out = run_cli("convert", "g.pt", "g.safetensors", cwd=tmp_path)
    assert out.returncode != 0 and "--cell" in out.stderr


def test_bad_file_gives_clear_error_not_traceback(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 3)
    out = run_cli("summary", "bad.safetensors", cwd=tmp_path)
    assert out.returncode == 2
    assert "bad.safetensors" in out.stderr and "Traceback" not in out.stderr
