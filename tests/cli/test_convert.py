"""``dalle2-fast convert``: an OpenAI CLIP archive and a LAION prior into our format (the same
numbers after loading ours), and flag errors that name the flag before anything loads."""
import copy
import json
from types import SimpleNamespace

import pytest
import torch

from dalle2_fast.cli import main
from dalle2_fast.models.clip import ClipAdapter
from dalle2_fast.models.prior.laion import LaionDiffusionPrior
from tests.interop.test_dalle2_pytorch_loader import _ours, _out, _to_reference_names, _write


def test_convert_laion_prior(tmp_path):
    from packaging.version import Version

    ours = _ours()
    src = _write(tmp_path, _to_reference_names(ours.state_dict()), Version("1.15.6"))
    assert main(["convert", str(src), str(tmp_path / "out")]) == 0  # kind recognised: prior_config.json beside
    back = LaionDiffusionPrior.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(_out(back), _out(ours), rtol=0, atol=0)
    assert json.loads((tmp_path / "out" / "converted_from.json").read_text())["kind"] == "laion-prior"
    with pytest.raises(ValueError, match="DST: .* already exists"):
        main(["convert", str(src), str(tmp_path / "out")])


def test_convert_openai_clip_archive(tmp_path):
    from tests.interop.test_openai_clip import _inputs, _openai_model_module

    m = _openai_model_module().CLIP(16, 32, 1, 128, 8, 12, 49408, 128, 2, 1).eval()
    _, ids = _inputs()
    torch.jit.trace(copy.deepcopy(m), (torch.randn(1, 3, 32, 32), ids[:1])).save(str(tmp_path / "ViT-tiny.pt"))
    assert main(["convert", str(tmp_path / "ViT-tiny.pt"), str(tmp_path / "clip")]) == 0
    ad = ClipAdapter.from_pretrained(tmp_path / "clip").eval()
    assert ad.model_cfg["quick_gelu"] is True
    with torch.no_grad():
        want = torch.nn.functional.normalize(m.encode_text(ids), dim=-1)
        torch.testing.assert_close(ad.encode_text(ids).embed, want, rtol=1e-5, atol=1e-5)


def test_flags_are_checked_first(tmp_path):
    with pytest.raises(FileNotFoundError, match="SRC"):
        main(["convert", str(tmp_path / "nope.pt"), str(tmp_path / "o")])
    (tmp_path / "x.bin").write_bytes(b"0")
    with pytest.raises(ValueError, match="pass --kind, one of: openai-clip"):
        main(["convert", str(tmp_path / "x.bin"), str(tmp_path / "o")])
    with pytest.raises(ValueError, match="--kind: expected one of"):
        main(["convert", str(tmp_path / "x.bin"), str(tmp_path / "o"), "--kind", "karlo-typo"])
    with pytest.raises(ValueError, match="--which: applies to --kind laion-prior"):
        main(["convert", str(tmp_path / "x.bin"), str(tmp_path / "o"), "--kind", "openai-clip", "--which", "ema"])
    with pytest.raises(FileNotFoundError, match="--config"):
        main(["convert", str(tmp_path / "x.bin"), str(tmp_path / "o"), "--config", str(tmp_path / "c.json")])
    assert not (tmp_path / "o").exists()
