"""``dalle2-fast convert`` and ``sample --pipeline`` on real-weight layouts (tiny random Karlo folder)."""
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from dalle2_fast.cli import console, main  # noqa: E402
from dalle2_fast.data.images import read_metadata  # noqa: E402
from tests.interop._unclip_refs import karlo_pipeline, prior, schedulers  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::FutureWarning")]
STEPS = ["--prior-steps", "2", "--decoder-steps", "2", "--upsampler-steps", "2"]


@pytest.fixture(scope="module")
def karlo_dir(tmp_path_factory):
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("karlo")
    karlo_pipeline(folder)
    return folder


def test_convert_then_sample(karlo_dir, tmp_path, capsys):
    dst = tmp_path / "ours"
    assert main(["convert", str(karlo_dir), str(dst)]) == 0
    assert (dst / "unclip.json").is_file() and "diffusers-unclip:" in capsys.readouterr().out
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert main(["sample", "a red cube", "-n", "1", "-o", str(a), "--pipeline", str(dst), *STEPS, "--quiet"]) == 0
    # the diffusers folder itself is accepted by --pipeline, and gives the same image
    assert main(["sample", "a red cube", "-n", "1", "-o", str(b), "--pipeline", str(karlo_dir), *STEPS,
                 "--quiet"]) == 0
    from PIL import Image
    import numpy as np

    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    assert read_metadata(a)["prompts"] == ["a red cube"]
    c = tmp_path / "c.png"
    assert main(["sample", "a red cube", "-n", "1", "-o", str(c), "--pipeline", str(dst), *STEPS, "--quiet",
                 "--dtype", "bfloat16"]) == 0
    diff = np.abs(np.asarray(Image.open(a), dtype=float) - np.asarray(Image.open(c), dtype=float)).mean()
    assert diff < 10, diff  # bfloat16: the same image up to rounding (mean |difference| in 0..255 levels)


def test_convert_a_prior(tmp_path):
    from dalle2_fast.models.prior import DiffusionPrior

    prior(seed=3).save_pretrained(str(tmp_path / "src" / "prior"))
    schedulers()[0].save_pretrained(str(tmp_path / "src" / "prior_scheduler"))
    assert main(["convert", str(tmp_path / "src" / "prior"), str(tmp_path / "p"), "--dtype", "bfloat16"]) == 0
    from safetensors import safe_open

    with safe_open(str(tmp_path / "p" / "model.safetensors"), "pt") as f:  # stored in bfloat16 (statistics: float32)
        assert f.get_tensor("x_proj.weight").dtype == torch.bfloat16 and f.get_tensor("clip_std").dtype == torch.float32
    p = DiffusionPrior.from_pretrained(tmp_path / "p")
    assert p.config.x0_clamp == 5.0


def test_convert_refuses_bad_input_before_work(karlo_dir, tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("keep me")
    cases = [
        ([str(tmp_path / "nothing"), str(tmp_path / "d")], "SRC: .* does not exist"),
        ([str(karlo_dir), str(full)], "DST: .* already exists and is not an empty directory"),
        ([str(tmp_path), str(tmp_path / "d2")], "SRC: cannot tell what .* is"),
        ([str(karlo_dir), str(tmp_path / "d3"), "--kind", "karlo"], "--kind karlo: .* is not Kakao Brain"),
        ([str(karlo_dir), str(tmp_path / "d4"), "--text-encoder", str(karlo_dir / "text_encoder")],
         "--text-encoder: applies to --kind karlo"),
        ([str(karlo_dir), str(tmp_path / "d5"), "--text-encoder", str(tmp_path / "nope")],
         "--text-encoder: .* does not exist"),
    ]
    import re

    for argv, want in cases:
        assert console(["convert", *argv]) == 2
        err = capsys.readouterr().err
        assert re.search(want, err), (argv, err)
    assert (full / "x").read_text() == "keep me" and not (tmp_path / "d").exists()
