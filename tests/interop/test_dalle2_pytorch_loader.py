"""The DALLE2-pytorch prior loader in-process (no reference package needed): files written in
DALLE2-pytorch's layout from our own tiny model load back to the same numbers, in both key
spellings and both pickled ``packaging`` layouts; what is wrong is refused, naming it."""
import json
import os
import pickle
import re
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from dalle2_fast.interop.dalle2_pytorch import (UnsafeCheckpointError, conventions_for, load_laion_prior,
                                                safe_load)
from dalle2_fast.models.prior.laion import LaionDiffusionPrior, LaionPriorConfig, laion_diffusion_config

NET = dict(dim=32, depth=2, heads=4, dim_head=16, ff_mult=2, max_text_len=6, num_timesteps=20, normformer=True)
PRIOR = {"net": NET, "image_embed_dim": 32, "timesteps": 20, "cond_drop_prob": 0.1}


def _ours(null_conditioning=True, attention="cosine"):
    torch.manual_seed(0)
    cfg = LaionPriorConfig(**{k: v for k, v in NET.items()}, attention=attention,
                           null_conditioning=null_conditioning, diffusion=laion_diffusion_config(20))
    m = LaionDiffusionPrior(cfg).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("norm_in.weight") or n.endswith("norm.weight"):
                p.add_(0.2 * torch.randn_like(p))
    return m


BACK = [  # ours -> DALLE2-pytorch, written out independently of the loader's table
    (r"^time_embed\.weight$", "to_time_embeds.0.weight"),
    (r"^init_norm\.weight$", "causal_transformer.init_norm.g"),
    (r"^rel_pos_bias\.(.*)$", r"causal_transformer.rel_pos_bias.\1"),
    (r"^blocks\.(\d+)\.attn\.null_kv$", r"causal_transformer.layers.\1.0.null_kv"),
    (r"^blocks\.(\d+)\.attn\.norm_in\.weight$", r"causal_transformer.layers.\1.0.norm.g"),
    (r"^blocks\.(\d+)\.attn\.to_(q|kv)\.weight$", r"causal_transformer.layers.\1.0.to_\2.weight"),
    (r"^blocks\.(\d+)\.attn\.proj_out\.weight$", r"causal_transformer.layers.\1.0.to_out.0.weight"),
    (r"^blocks\.(\d+)\.attn\.norm_out\.weight$", r"causal_transformer.layers.\1.0.to_out.1.g"),
    (r"^blocks\.(\d+)\.ff\.norm\.weight$", r"causal_transformer.layers.\1.1.0.g"),
    (r"^blocks\.(\d+)\.ff\.proj_in\.weight$", r"causal_transformer.layers.\1.1.1.weight"),
    (r"^blocks\.(\d+)\.ff\.post_norm\.weight$", r"causal_transformer.layers.\1.1.3.g"),
    (r"^blocks\.(\d+)\.ff\.proj_out\.weight$", r"causal_transformer.layers.\1.1.5.weight"),
    (r"^norm\.weight$", "causal_transformer.norm.g"),
    (r"^project_out\.weight$", "causal_transformer.project_out.weight"),
    (r"^(learned_query|null_text_encodings|null_text_embeds|null_image_embed)$", r"\1"),
]


def _to_reference_names(state, old=False):
    """Our state -> a DALLE2-pytorch prior state (``net.*`` + what its files also hold: rotary
    frequencies per layer, the noise-schedule buffers). ``old``: the spellings before 1.9.0 /
    0.16: LayerNorm ``gamma`` + a zero ``beta``, ``null_text_embed`` for the padding tokens."""
    from dalle2_fast.diffusion import get_betas

    out = {}
    for ours, v in state.items():
        name = next(re.sub(p, r, ours) for p, r in BACK if re.match(p, ours))
        if old and name == "null_text_encodings":
            name = "null_text_embed"
        if old and name.endswith(".g"):
            out["net." + name[:-2] + ".gamma"] = v
            out["net." + name[:-2] + ".beta"] = torch.zeros_like(v)
        else:
            out["net." + name] = v
    for i in range(NET["depth"]):
        out[f"net.causal_transformer.layers.{i}.0.rotary_emb.freqs"] = 1.0 / 10000 ** (torch.arange(0, 16, 2).float()
                                                                                           / 16)
    out["noise_scheduler.betas"] = get_betas("cosine", 20).float()
    return out


def _text():
    g = torch.Generator().manual_seed(3)
    return SimpleNamespace(tokens=torch.randn(2, 4, 32, generator=g), mask=torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]],
                                                                                        dtype=torch.bool),
                           embed=torch.randn(2, 32, generator=g))


def _out(m):
    t = _text()
    with torch.no_grad():
        return m(torch.randn(2, 32, generator=torch.Generator().manual_seed(4)), torch.tensor([0, 19]), t.tokens,
                 t.mask, t.embed)


def _write(tmp_path, state, version_obj, name="best.pth"):
    (tmp_path / "prior_config.json").write_text(json.dumps({"prior": PRIOR}))
    torch.save({"model": state, "version": version_obj, "step": 3}, tmp_path / name)
    return tmp_path / name


def test_round_trip_current_layout(tmp_path):
    from packaging.version import Version

    ours = _ours()
    path = _write(tmp_path, _to_reference_names(ours.state_dict()), Version("1.15.6"))
    back = load_laion_prior(path)
    assert back.config.source == "dalle2-pytorch 1.15.6" and back.config.null_conditioning
    torch.testing.assert_close(_out(back), _out(ours), rtol=0, atol=0)


def _old_packaging_version(release):
    """The bytes old ``packaging`` (< 22) pickled for Version(release): a dict state holding a
    ``_Version`` namedtuple and a key with ``Infinity`` objects. Written with stand-in classes
    in a throw-away module, then renamed to packaging's names."""
    mod = types.ModuleType("oldpackaging_version")

    class Version:
        pass

    class _Version(tuple):
        def __new__(cls, *a):
            return tuple.__new__(cls, a)

        def __getnewargs__(self):
            return tuple(self)

    class InfinityType:
        pass

    for c in (Version, _Version, InfinityType):
        c.__module__, c.__qualname__ = mod.__name__, c.__name__
        setattr(mod, c.__name__, c)
    sys.modules[mod.__name__] = mod
    try:
        v = Version()
        v.__dict__.update(_version=_Version(0, release, None, None, None, None), _key=(0, release, InfinityType()))
        raw = pickle.dumps(v, protocol=2)
    finally:
        del sys.modules[mod.__name__]
    raw = raw.replace(b"oldpackaging_version\nInfinityType", b"packaging._structures\nInfinityType")
    return raw.replace(b"oldpackaging_version", b"packaging.version")


def test_old_spellings_and_old_packaging_pickle(tmp_path):
    ours = _ours(null_conditioning=False, attention="pb_relax")
    state = _to_reference_names(ours.state_dict(), old=True)
    assert any(k.endswith(".gamma") for k in state) and "net.null_text_embed" in state
    raw = _old_packaging_version((1, 1, 0))
    # splice the old pickle in: save with a placeholder string, then swap the placeholder's bytes
    path = _write(tmp_path, state, "VERSION-PLACEHOLDER")
    import zipfile

    with zipfile.ZipFile(path) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    pkl = next(n for n in entries if n.endswith("data.pkl"))
    body = raw[2:-1]  # without PROTO and STOP
    placeholder = b"X\x13\x00\x00\x00VERSION-PLACEHOLDER"
    assert placeholder in entries[pkl]
    entries[pkl] = entries[pkl].replace(placeholder, body)
    with zipfile.ZipFile(path, "w") as zf:
        for n, b in entries.items():
            zf.writestr(n, b)
    obj = safe_load(path)
    assert str(obj["version"]) == "1.1.0"
    back = load_laion_prior(path)
    assert back.config.attention == "pb_relax" and not back.config.null_conditioning
    torch.testing.assert_close(_out(back), _out(ours), rtol=0, atol=0)
    # a non-zero LayerNorm bias cannot be represented: named
    state["net.causal_transformer.norm.beta"] = torch.ones(32)
    path = _write(tmp_path, state, "1.1.0", "bias.pth")
    with pytest.raises(ValueError, match="causal_transformer.norm.beta"):
        load_laion_prior(path)


def test_refusals_name_what_is_wrong(tmp_path):
    from packaging.version import Version

    ours = _ours()
    good = _to_reference_names(ours.state_dict())
    # a global outside the allow-list, named (and not called)
    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save({"model": good, "version": Version("1.15.6"), "x": Evil()}, tmp_path / "evil.pth")
    (tmp_path / "prior_config.json").write_text(json.dumps({"prior": PRIOR}))
    with pytest.raises(UnsafeCheckpointError, match="getcwd") as e:
        load_laion_prior(tmp_path / "evil.pth")
    assert e.value.global_name.endswith("getcwd")
    # a missing and a mis-shaped tensor, named
    missing = {k: v for k, v in good.items() if k != "net.causal_transformer.layers.1.0.to_kv.weight"}
    with pytest.raises(Exception, match=r"blocks\.1\.attn\.to_kv\.weight"):
        load_laion_prior(_write(tmp_path, missing, Version("1.15.6"), "m.pth"))
    shaped = dict(good, **{"net.learned_query": torch.zeros(31)})
    with pytest.raises(Exception, match=r"learned_query: \(31,\), expected \(32,\)"):
        load_laion_prior(_write(tmp_path, shaped, Version("1.15.6"), "s.pth"))
    # a schedule that is not the configured one
    sched = dict(good, **{"noise_scheduler.betas": torch.linspace(1e-4, 0.02, 20)})
    with pytest.raises(ValueError, match="noise_scheduler.betas"):
        load_laion_prior(_write(tmp_path, sched, Version("1.15.6"), "b.pth"))
    # too old a release; no release and ambiguous keys
    with pytest.raises(ValueError, match="0.22.3 priors are not supported"):
        load_laion_prior(_write(tmp_path, good, Version("0.22.3"), "o.pth"))
    old_keys = {("net.null_text_embed" if k == "net.null_text_encodings" else k): v for k, v in good.items()
                if k not in ("net.null_text_embeds", "net.null_image_embed")}
    torch.save({"model": old_keys}, tmp_path / "nov.pth")
    with pytest.raises(ValueError, match="pass version="):
        load_laion_prior(tmp_path / "nov.pth")
    assert load_laion_prior(tmp_path / "nov.pth", version="1.8.4").config.attention == "cosine"
    # an unsupported option, and no config beside the file
    (tmp_path / "sc.json").write_text(json.dumps({"prior": dict(PRIOR, net=dict(NET, self_cond=True))}))
    with pytest.raises(ValueError, match="self_cond"):
        load_laion_prior(tmp_path / "nov.pth", tmp_path / "sc.json", version="1.15.6")
    (tmp_path / "lone").mkdir()
    torch.save({"model": good}, tmp_path / "lone" / "best.pth")
    with pytest.raises(FileNotFoundError, match="prior_config.json"):
        load_laion_prior(tmp_path / "lone" / "best.pth")


def test_conventions_table():
    assert conventions_for("1.15.6") == {"attention": "cosine", "null_conditioning": True}
    assert conventions_for("1.9.0") == {"attention": "cosine", "null_conditioning": True}
    assert conventions_for("1.8.4") == {"attention": "cosine", "null_conditioning": False}
    assert conventions_for("1.4.3")["attention"] == "cosine"
    assert conventions_for("1.4.2") == {"attention": "pb_relax", "null_conditioning": False}
    assert conventions_for("0.23.3")["attention"] == "pb_relax"
    with pytest.raises(ValueError, match="0.23.2"):
        conventions_for("0.23.2")


def test_our_format_round_trip_and_seeds(tmp_path):
    ours = _ours()
    ours.save_pretrained(tmp_path / "p")
    back = LaionDiffusionPrior.from_pretrained(tmp_path / "p").eval()
    torch.testing.assert_close(_out(back), _out(ours), rtol=0, atol=0)
    t = _text()
    both = ours.sample(t, [5, 6], steps=4, guidance=2.0)
    one = ours.sample(SimpleNamespace(tokens=t.tokens[1:], mask=t.mask[1:], embed=t.embed[1:]), [6], steps=4,
                      guidance=2.0)
    torch.testing.assert_close(both[1:], one, rtol=1e-5, atol=1e-6)  # image of seed s is the same in any batch
    batch = {"image_embed": torch.nn.functional.normalize(t.embed, dim=-1), "text_tokens": t.tokens,
             "text_mask": t.mask, "text_embed": t.embed, "generator": torch.Generator().manual_seed(0)}
    loss = ours.train().loss(batch)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and ours.learned_query.grad is not None
