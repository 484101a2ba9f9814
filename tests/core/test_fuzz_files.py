"""Fuzzing the weights reader (dalle2_fast.files through checkpoint.load_pretrained): random
bytes, truncation at every section boundary, header-length and header-JSON mutations,
torch.save archives, raw pickles and pickles with __reduce__ gadgets under the safetensors
name. Every case must end in CheckpointError with a one-line message naming the file — never a
library traceback, MemoryError or OverflowError, never a file written, never code executed.
Deterministic seeds; the whole file runs in a few seconds."""
import builtins
import json
import os
import pickle
import random
import struct

import pytest
import torch

from dalle2_fast.checkpoint import CheckpointError, load_pretrained
from dalle2_fast.files import read_safetensors_header, sniff
from dalle2_fast.models import AEConfig, AutoEncoder


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A tiny AE checkpoint directory and the bytes of its weights file."""
    d = tmp_path_factory.mktemp("good") / "ae"
    torch.manual_seed(0)
    AutoEncoder(AEConfig(resolution=8, channels=4, latent_channels=2, n_res=1)).save_pretrained(d)
    return d, (d / "model.safetensors").read_bytes()


@pytest.fixture
def ckpt(good, tmp_path):
    """A fresh copy of the good checkpoint whose weights a test overwrites."""
    d = tmp_path / "ae"
    d.mkdir()
    (d / "config.json").write_bytes((good[0] / "config.json").read_bytes())
    return d


def assert_refused(path, weights=None, match=None):
    """load_pretrained(path) raises our error, one line, naming the file; nothing else changes."""
    before = sorted(os.listdir(path if path.is_dir() else path.parent))
    with pytest.raises(CheckpointError) as info:
        load_pretrained(path)
    msg = str(info.value)
    assert type(info.value) is CheckpointError
    assert "\n" not in msg and str(weights or path) in msg, msg
    if match is not None:
        assert match in msg, msg
    assert sorted(os.listdir(path if path.is_dir() else path.parent)) == before, "no file written"
    return msg


def write_weights(ckpt, data: bytes):
    (ckpt / "model.safetensors").write_bytes(data)
    return ckpt / "model.safetensors"


def safetensors_bytes(header, data=b"", length=None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def test_random_bytes(ckpt):
    rng = random.Random(0)
    for _ in range(150):
        n = rng.choice([0, 1, 7, 8, 9, 58, rng.randrange(10, 4000)])
        data = bytes(rng.randrange(256) for _ in range(n))
        if rng.random() < 0.3 and n >= 9:  # make the '{' sniff succeed to reach the header reader
            data = data[:8] + b"{" + data[9:]
        assert_refused(ckpt, write_weights(ckpt, data))


def test_truncation_at_every_section_boundary(ckpt, good):
    data = good[1]
    hdr = read_safetensors_header(good[0] / "model.safetensors")
    n = hdr.header_len
    cuts = {0, 1, 7, 8, 9, 8 + n // 2, 8 + n - 1, 8 + n, 8 + n + 1, len(data) - 1}
    for _, _, (b, e) in hdr.tensors.values():
        cuts |= {8 + n + b, 8 + n + b + 1, 8 + n + e - 1}
    rng = random.Random(1)
    cuts |= {rng.randrange(len(data)) for _ in range(20)}
    for cut in sorted(c for c in cuts if 0 <= c < len(data)):
        msg = assert_refused(ckpt, write_weights(ckpt, data[:cut]))
        assert "truncated" in msg or "empty" in msg, (cut, msg)
    assert_refused(ckpt, write_weights(ckpt, data + b"\0" * 5), match="padded")  # trailing garbage


def test_header_length_field(ckpt, good):
    data = good[1]
    (n,) = struct.unpack("<Q", data[:8])
    for length in (0, 1, 2, n - 1, n + 1, len(data) - 8, len(data) - 7, 2**31, 2**32 + n, 2**63, 2**64 - 1):
        assert_refused(ckpt, write_weights(ckpt, struct.pack("<Q", length) + data[8:]))


GOOD_ENTRY = {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
BAD_HEADERS = [  # (header, what the message must say)
    ([1, 2], "expected a JSON object, got list"),
    (5, "expected a JSON object, got int"),
    ("w", "expected a JSON object, got str"),
    (None, "expected a JSON object"),
    ({"w": 5}, "expected an object with dtype"),
    ({"w": dict(GOOD_ENTRY, dtype="F33")}, "dtype"),
    ({"w": dict(GOOD_ENTRY, dtype=4)}, "dtype"),
    ({"w": dict(GOOD_ENTRY, shape=[-2, -12])}, "shape"),
    ({"w": dict(GOOD_ENTRY, shape=[2.0, 3])}, "shape"),
    ({"w": dict(GOOD_ENTRY, shape=[True, 6])}, "shape"),
    ({"w": dict(GOOD_ENTRY, shape=[[2], 3])}, "shape"),
    ({"w": dict(GOOD_ENTRY, shape=[2**62, 2**62])}, "needs"),
    ({"w": dict(GOOD_ENTRY, shape=[2, 4])}, "needs"),
    ({"w": dict(GOOD_ENTRY, data_offsets=[24, 0])}, "data_offsets"),
    ({"w": dict(GOOD_ENTRY, data_offsets=[0, 2**64])}, "truncated"),
    ({"w": dict(GOOD_ENTRY, data_offsets=[-24, 0])}, "data_offsets"),
    ({"w": dict(GOOD_ENTRY, data_offsets=[0])}, "data_offsets"),
    ({"w": dict(GOOD_ENTRY, data_offsets=["0", "24"])}, "data_offsets"),
    ({"w": {"dtype": "F32", "shape": [6]}}, "expected an object with dtype"),
    ({"w": dict(GOOD_ENTRY, extra=1)}, "expected an object with dtype"),
    ({"w": GOOD_ENTRY, "v": dict(GOOD_ENTRY, shape=[1], data_offsets=[20, 24])}, "overlaps"),
    ({"w": dict(GOOD_ENTRY, shape=[1, 3], data_offsets=[12, 24])}, "gap"),
    ({"__metadata__": {"a": 1}, "w": GOOD_ENTRY}, "__metadata__"),
    ({"__metadata__": [1], "w": GOOD_ENTRY}, "__metadata__"),
]


@pytest.mark.parametrize("header, says", BAD_HEADERS)
def test_header_json_mutations(ckpt, header, says):
    data = safetensors_bytes(header if header is not None else b"null    ", b"\0" * 24)
    assert_refused(ckpt, write_weights(ckpt, data), match=says)


@pytest.mark.parametrize("raw, says", [
    (b'{"w": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]}, "w": {}}', "duplicate key"),
    (b'{"w": \xff\xfe}', "UTF-8"),
    (b"{" + b'"a":[' * 100_000 + b"]" * 100_000 + b"}", "JSON"),
    (b'{"w": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 24]}}', "JSON"),
    (b'{"w": NaN}', "expected an object with dtype"),
    (b'{"w": {"dtype": "F32"', "JSON"),
])
def test_header_bytes_mutations(ckpt, raw, says):
    assert_refused(ckpt, write_weights(ckpt, safetensors_bytes(raw, b"\0" * 24)), match=says)


def test_random_header_mutations(ckpt, good):
    """Random byte flips inside a real header: refused, or (a harmless flip, e.g. in padding)
    loaded; never anything but CheckpointError."""
    data = good[1]
    (n,) = struct.unpack("<Q", data[:8])
    rng = random.Random(2)
    refused = 0
    for _ in range(60):
        buf = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            buf[8 + rng.randrange(n)] = rng.randrange(256)
        write_weights(ckpt, bytes(buf))
        try:
            load_pretrained(ckpt)
        except CheckpointError as e:
            assert "\n" not in str(e)
            refused += 1
    assert refused > 30


class Gadget:
    """Unpickling this calls builtins.open(marker, 'w'): a file appears if code runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def test_pickles_and_archives_are_named_never_run(ckpt, tmp_path):
    marker = tmp_path / "pwned"
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Gadget(probe)))  # the gadget works: a plain unpickler runs it
    assert probe.exists()
    w = ckpt / "model.safetensors"
    torch.save({"w": torch.ones(2)}, w)
    assert_refused(ckpt, w, match="PyTorch zip archive")
    torch.save({"w": Gadget(marker)}, w)
    assert_refused(ckpt, w, match="PyTorch zip archive")
    for proto in (2, 4, 5):
        w.write_bytes(pickle.dumps({"w": Gadget(marker)}, protocol=proto))
        assert_refused(ckpt, w, match="pickle")
    w.write_bytes(pickle.dumps({"w": list(range(12))}, protocol=2))  # a short pickle, like the 58 bytes
    assert_refused(ckpt, w, match="pickle")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(w))
    assert_refused(ckpt, w, match="TorchScript")
    assert not marker.exists(), "nothing was executed"


def test_single_file_checkpoint_metadata(tmp_path, good):
    """The single-file form keeps model type and config in the safetensors metadata."""
    one = tmp_path / "ae.safetensors"
    AutoEncoder(AEConfig(resolution=8, channels=4, latent_channels=2, n_res=1)).save_pretrained(one)
    hdr = read_safetensors_header(one)
    tensors = {k: v for k, v in json.loads(one.read_bytes()[8:8 + hdr.header_len]).items() if k != "__metadata__"}
    data = one.read_bytes()[8 + hdr.header_len:]
    rec = json.loads(hdr.metadata["dalle2_fast"])
    for meta, says in ((None, "no 'dalle2_fast' metadata"), ({"dalle2_fast": "[1]"}, "expected a JSON object"),
                       ({"dalle2_fast": "{"}, "not valid JSON"),
                       ({"dalle2_fast": json.dumps(dict(rec, format_version="1"))}, "format_version"),
                       ({"dalle2_fast": json.dumps(dict(rec, config=dict(rec["config"], channels=-4)))},
                        "config.channels: expected int in [1")):
        header = dict(tensors, **({"__metadata__": meta} if meta else {}))
        one.write_bytes(safetensors_bytes(header, data))
        assert_refused(one, one, match=says)
    assert sniff(one) == "safetensors"
