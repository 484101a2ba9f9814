"""Runs DALLE2-pytorch's own prior (a child process; see tests/_peers.py) on a spec file and
writes what it computed: ``python _dalle2_reference.py SPEC.pt OUT.pt``.

SPEC: {'net': DiffusionPriorNetwork kwargs, 'prior': DiffusionPrior kwargs, 'seed': int,
'checkpoint': path to write (a trainer-style checkpoint: model, ema_model, version, ...),
'forward': [dict(x, t, text_embed, text_encodings, drops...)], 'sample': [dict(text_embed,
text_encodings, steps, cond_scale, noise=[tensors popped by torch.randn / randn_like])]}.
OUT: {'forward': [outputs], 'sample': [outputs]}.
"""
import os
import sys
import types

sys.path[:0] = os.environ["DALLE2_REF_PATHS"].split(os.pathsep)


def _stub(name, **attrs):
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)

    def getattr_(attr):  # any other public name: an inert class
        if attr.startswith("__"):
            raise AttributeError(attr)
        return type(attr, (), {})

    mod.__getattr__ = getattr_
    sys.modules[name] = mod
    return mod


# modules imported by dalle2_pytorch for other models (decoder augmentations, x-clip, CoCa, VQGAN)
for _name in ("kornia", "kornia.filters", "kornia.augmentation", "x_clip", "coca_pytorch", "vector_quantize_pytorch",
              "resize_right"):
    _stub(_name)
_pkg_dir = next(os.path.join(p, "dalle2_pytorch") for p in sys.path if os.path.isdir(os.path.join(p, "dalle2_pytorch")))
_pkg = types.ModuleType("dalle2_pytorch")  # skip the package __init__ (trainer, accelerate, ...)
_pkg.__path__ = [_pkg_dir]
sys.modules["dalle2_pytorch"] = _pkg

import torch  # noqa: E402
from packaging import version as pversion  # noqa: E402

import dalle2_pytorch.dalle2_pytorch as ref  # noqa: E402
from dalle2_pytorch.version import __version__  # noqa: E402


def randomize(module, seed):
    """Every parameter random and non-trivial (gains != 1), rotary frequencies kept."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("rotary_emb.freqs"):
                continue
            if "relative_attention_bias" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            elif name.endswith(".g"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            elif p.dim() == 2 and name.endswith("weight") and "to_time_embeds.0.weight" not in name:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g))


def main(spec_path, out_path):
    spec = torch.load(spec_path, weights_only=False)
    torch.manual_seed(spec["seed"])
    net = ref.DiffusionPriorNetwork(**spec["net"])
    prior = ref.DiffusionPrior(net, **spec["prior"]).eval()
    randomize(prior, spec["seed"])
    ema = {k: (v + 0.01 if k.startswith("net.") and not k.endswith("freqs") else v) for k, v in prior.state_dict().items()}
    if spec.get("checkpoint"):
        torch.save({"model": ema, "ema_model": prior.state_dict(), "version": pversion.parse(__version__),
                    "step": 1, "optimizer": {"state": {}, "param_groups": []}}, spec["checkpoint"])
    out = {"forward": [], "sample": [], "version": __version__}
    new_api = "text_cond_drop_prob" in ref.DiffusionPriorNetwork.forward.__code__.co_varnames
    with torch.no_grad():
        for f in spec.get("forward", []):
            kw = dict(text_embed=f["text_embed"], text_encodings=f["text_encodings"])
            if new_api:
                kw.update(text_cond_drop_prob=f.get("text_drop", 0.0), image_cond_drop_prob=f.get("image_drop", 0.0))
            else:
                kw.update(cond_drop_prob=f.get("text_drop", 0.0))
            out["forward"].append(prior.net(f["x"], f["t"], **kw))
        for s in spec.get("sample", []):
            queue = list(s["noise"])
            real_randn, real_like = torch.randn, torch.randn_like
            torch.randn = lambda *a, **k: queue.pop(0).clone()
            torch.randn_like = lambda t, **k: queue.pop(0).clone()
            try:
                cond = dict(text_embed=s["text_embed"], text_encodings=s["text_encodings"])
                z = prior.p_sample_loop(tuple(s["text_embed"].shape), text_cond=cond, cond_scale=s["cond_scale"],
                                        timesteps=s["steps"])
            finally:
                torch.randn, torch.randn_like = real_randn, real_like
            out["sample"].append({"z": z, "unused_noise": len(queue)})
    torch.save(out, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
