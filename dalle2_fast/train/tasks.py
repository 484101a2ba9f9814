"""What training means for each model of the suite: build, optimizers, one step, evaluation,
the picture written at the end. The loop (``train.loop``) is shared."""
from __future__ import annotations

import dataclasses
import typing

import torch

from dalle2_fast.checkpoint import load_pretrained
from dalle2_fast.data.shapes import NUM_CLASSES, VOCAB, tokenize
from dalle2_fast.eval import psnr, recognition_rate
from dalle2_fast.models import (GAN, VAE, VQVAE, VQVAE2, AEConfig, AutoEncoder, DAEConfig, DenoisingAutoEncoder,
                                GANConfig, VAEConfig, VQVAE2Config, VQVAE2Generator, VQVAEConfig)
from dalle2_fast.seeding import per_sample_randn
from dalle2_fast.train.distributed import no_sync


def apply_overrides(cfg, overrides: list[str]):
    """``['channels=32', 'loss=hinge']`` -> a copy of dataclass ``cfg`` with those fields set,
    each value parsed as the field's type; an unknown field raises."""
    hints = typing.get_type_hints(type(cfg))
    kw = {}
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        if k not in hints:
            raise ValueError(f"--set {k}: {type(cfg).__name__} has no field {k!r}; fields: {sorted(hints)}")
        kw[k] = parse_field(k, hints[k], v)
    return dataclasses.replace(cfg, **kw)


def parse_field(k: str, t, v: str):
    """Parse ``v`` as the dataclass field type ``t``: bool, int, float, str, ``X | None``
    ('none' -> None) and ``tuple[X, ...]`` (comma-separated)."""
    args = typing.get_args(t)
    if type(None) in args and len(args) == 2:
        if v.lower() == "none":
            return None
        t = next(a for a in args if a is not type(None))
        args = typing.get_args(t)
    if typing.get_origin(t) is tuple and args:
        return tuple(parse_field(k, args[0], p) for p in v.split(",") if p.strip())
    if t is bool:
        if v.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"--set {k}: expected true/false, got {v!r}")
        return v.lower() in ("true", "1")
    if t in (int, float, str):
        try:
            return t(v)
        except ValueError:
            raise ValueError(f"--set {k}: expected {t.__name__}, got {v!r}") from None
    raise ValueError(f"--set {k}: field type {t} cannot be set from the command line")


def label_for(label_kind: str, batch: dict):
    if label_kind == "class":
        return batch["label"]
    if label_kind == "caption":
        return tokenize(batch["caption"])
    return None


def cycle_labels(n: int) -> torch.Tensor:
    """Class ids 0, 1, ..., NUM_CLASSES-1, 0, ... for conditional sample grids."""
    return torch.arange(n) % NUM_CLASSES


class ReconTask:
    """AE, DAE, VAE, VQ-VAE, VQ-VAE-2: minimise model(x).loss."""
    default_lr = 1e-3

    def __init__(self, cls, cfg_cls):
        self.cls, self.cfg_cls = cls, cfg_cls

    def build(self, args):
        return self.cls(apply_overrides(self.cfg_cls(resolution=args.resolution), args.set))

    def optimizers(self, model, lr):
        return {"model": torch.optim.Adam(model.parameters(), lr=lr)}

    def step(self, model, batch, opts) -> dict:
        model.train()
        # AE/DAE/VAE: the corruption / reparameterisation noise of item i from its own seed
        seeds = {"seeds": batch["seeds"]("noise")} if issubclass(self.cls, AutoEncoder) else {}
        out = model(batch["image"], **seeds)
        opts["model"].zero_grad(set_to_none=True)
        out.loss.backward()
        opts["model"].step()
        logs = {"loss": out.loss.item(), "recon": out.recon_loss.item()}
        for k in ("kl", "perplexity", "top_perplexity"):
            if hasattr(out, k):
                logs[k] = float(getattr(out, k).detach())
        return logs

    @torch.no_grad()
    def evaluate(self, model, held: dict, gen: torch.Generator) -> dict:
        model.eval()
        x = held["image"]
        m = {"heldout_psnr_db": psnr(model.reconstruct(x), x)}
        if isinstance(model, (VQVAE, VQVAE2)):
            out = model(x)
            m["heldout_perplexity"] = float(out.perplexity)
            m["codebook_size"] = model.config.num_codes
            if isinstance(model, VQVAE2):
                m["heldout_top_perplexity"] = float(out.top_perplexity)
        if isinstance(model, DenoisingAutoEncoder):  # corrupted held-out input -> clean target
            torch.manual_seed(0)
            xc = model.corrupt(x)
            m["heldout_corrupted_psnr_db"] = psnr(xc.clamp(-1, 1), x)
            m["heldout_denoised_psnr_db"] = psnr(model.reconstruct(xc), x)
        if isinstance(model, VAE):
            m["sample_recognition_rate"] = recognition_rate(model.sample(len(x), generator=gen))
        return m

    @torch.no_grad()
    def picture(self, model, held: dict, n: int, gen: torch.Generator) -> torch.Tensor:
        model.eval()
        if isinstance(model, VAE):
            return model.sample(n, generator=gen)
        x = held["image"][: max(1, n // 2)]
        return torch.stack([x, model.reconstruct(x)], 1).flatten(0, 1)  # original, reconstruction, ...


class GANTask:
    default_lr = 2e-4

    def build(self, args):
        return GAN(apply_overrides(GANConfig(resolution=args.resolution), args.set))

    def optimizers(self, model, lr):
        return {"g": torch.optim.Adam(model.generator.parameters(), lr=lr, betas=(0.5, 0.999)),
                "d": torch.optim.Adam(model.discriminator.parameters(), lr=lr, betas=(0.5, 0.999))}

    def step(self, model, batch, opts) -> dict:
        """One D step on (real, G(z).detach()), then one G step through D. Under DDP the
        generator and discriminator are separate DDP modules: the D step's two D forwards feed one
        backward (each parameter's gradient is all-reduced once), and the G step's D forward runs
        under ``no_sync`` (D's gradients from it are discarded, so they are not all-reduced)."""
        model.train()
        real = batch["image"]
        z = per_sample_randn(batch["seeds"]("z"), (model.config.z_dim,), real.device, real.dtype)
        fake = model.generator(z)
        d_loss = model.d_loss(model.discriminator(real), model.discriminator(fake.detach()))
        opts["d"].zero_grad(set_to_none=True)
        d_loss.backward()
        opts["d"].step()
        with no_sync(model.discriminator):
            g_loss = model.g_loss(model.discriminator(fake))
            opts["g"].zero_grad(set_to_none=True)
            g_loss.backward()
        opts["g"].step()
        return {"d_loss": d_loss.item(), "g_loss": g_loss.item()}

    @torch.no_grad()
    def evaluate(self, model, held: dict, gen: torch.Generator) -> dict:
        return {"sample_recognition_rate": recognition_rate(model.sample(len(held["image"]), generator=gen))}

    @torch.no_grad()
    def picture(self, model, held, n, gen):
        return model.sample(n, generator=gen)


class PriorTask:
    """The VQ-VAE-2 priors, trained on the codes of a frozen VQ-VAE-2 (``--vqvae PATH``)."""
    default_lr = 1e-3

    def build(self, args):
        if not getattr(args, "vqvae", None):
            raise ValueError("train vqvae2-prior needs --vqvae PATH (a trained vqvae2 checkpoint)")
        vq = load_pretrained(args.vqvae, expected_cls=VQVAE2)
        kw = dict(channels=64, n_layers=8, label="class", attention_every=4)  # measured on shapes 32x32
        for item in args.set or []:
            k, v = item.split("=", 1)
            if k not in kw:
                raise ValueError(f"--set {k}: vqvae2-prior takes {sorted(kw)}")
            kw[k] = v if k == "label" else int(v)
        gen = VQVAE2Generator.from_vqvae(vq, num_classes=NUM_CLASSES, vocab_size=len(VOCAB), **kw)
        gen.vqvae.requires_grad_(False)
        return gen

    def optimizers(self, model, lr):
        return {"prior": torch.optim.Adam(model.prior_parameters(), lr=lr)}

    def step(self, model, batch, opts) -> dict:
        model.train()
        model.vqvae.eval()  # frozen: no EMA / dead-code updates
        terms = model.loss({"image": batch["image"], "label": label_for(model.config.top.label, batch)})
        opts["prior"].zero_grad(set_to_none=True)
        terms["loss"].backward()
        opts["prior"].step()
        return {k: v.item() for k, v in terms.items()}

    def _labels(self, model, n):
        kind = model.config.top.label
        if kind == "class":
            return cycle_labels(n)
        if kind == "caption":
            from dalle2_fast.data.shapes import class_name
            return tokenize([f"a {class_name(int(k))}" for k in cycle_labels(n)])
        return None

    @torch.no_grad()
    def evaluate(self, model, held: dict, gen: torch.Generator) -> dict:
        model.eval()
        x = held["image"][:256]
        terms = model.loss({"image": x, "label": label_for(model.config.top.label, held)})
        lt, lb = terms["top_nll"], terms["bottom_nll"]
        n = min(64, len(x))
        imgs = model.sample(n, self._labels(model, n), generator=gen)
        labels = cycle_labels(n).tolist() if model.config.top.label != "none" else None
        return {"heldout_top_nll": lt.item(), "heldout_bottom_nll": lb.item(),
                "sample_recognition_rate": recognition_rate(imgs, labels)}

    @torch.no_grad()
    def picture(self, model, held, n, gen):
        model.eval()
        return model.sample(n, self._labels(model, n), generator=gen)


TASKS = {
    "gan": GANTask(),
    "ae": ReconTask(AutoEncoder, AEConfig),
    "dae": ReconTask(DenoisingAutoEncoder, DAEConfig),
    "vae": ReconTask(VAE, VAEConfig),
    "vqvae": ReconTask(VQVAE, VQVAEConfig),
    "vqvae2": ReconTask(VQVAE2, VQVAE2Config),
    "vqvae2-prior": PriorTask(),
}

from dalle2_fast.train.diffusion_tasks import ClassifierTask, DiffusionTask  # noqa: E402

TASKS.update({"ddpm": DiffusionTask("ddpm"), "iddpm": DiffusionTask("iddpm"), "adm": DiffusionTask("adm"),
              "classifier": ClassifierTask()})
