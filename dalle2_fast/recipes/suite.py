"""Training recipes of the model suite (``dalle2-fast train gan|ae|dae|vae|vqvae|vqvae2|
vqvae2-prior|ddpm|iddpm|adm|classifier``): what each model trains on and with which defaults.
The loop (``dalle2_fast.train.loop``) runs them.

Options (``opts``, the command line's): ``resolution``, ``data`` ('shapes' or an image folder),
``set`` (``key=value`` config overrides), and per model ``classes`` (what a class label is, see
``dalle2_fast.data.labels``), ``vqvae`` (the trained VQ-VAE-2 of the priors), ``bpd_n`` and
``sample_steps`` (the diffusion models' end-of-training evaluation).

Diffusion defaults (override any field with ``--set key=value``; U-Net, diffusion and model
fields are told apart by name):

- ddpm:  preset ddpm-32, linear schedule, fixed (small) variance, L_simple; unconditional.
- iddpm: preset iddpm-32, cosine schedule, learned-range variance, hybrid loss; unconditional.
- adm:   preset adm-32, cosine, learned-range, hybrid; class = shape kind, 10% label drop (CFG).
- classifier: preset classifier-32 on x_t at uniform random t of a cosine 1000-step process
  (the iddpm / adm default), class = shape kind.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dalle2_fast.checkpoint import load_pretrained
from dalle2_fast.data.labels import kind_for_num_classes, kind_of, label_names, labels_from_class_ids, num_labels
from dalle2_fast.data.shapes import NUM_CLASSES, VOCAB, class_name, tokenize
from dalle2_fast.diffusion import DiffusionConfig, GaussianDiffusion
from dalle2_fast.eval import psnr, recognition_rate
from dalle2_fast.eval.recognition import recognition_rate_of
from dalle2_fast.models import (GAN, VAE, VQVAE, VQVAE2, AEConfig, AutoEncoder, DAEConfig, DenoisingAutoEncoder,
                                GANConfig, VAEConfig, VQVAE2Config, VQVAE2Generator, VQVAEConfig)
from dalle2_fast.models.classifier import ClassifierConfig, NoisyClassifier
from dalle2_fast.models.diffusion_model import DiffusionModel, DiffusionModelConfig
from dalle2_fast.models.unet import UNetConfig
from dalle2_fast.models.unet_configs import classifier_preset, unet_preset
from dalle2_fast.recipes.common import LossTask, apply_overrides, make_datasets, split_overrides
from dalle2_fast.seeding import per_sample_randn
from dalle2_fast.train.distributed import item_dropout, no_sync


def cycle_labels(n: int, k: int = NUM_CLASSES) -> torch.Tensor:
    """Class ids 0, 1, ..., k-1, 0, ... for conditional sample grids."""
    return torch.arange(n) % k


def _seeds(n: int, gen: torch.Generator) -> list[int]:
    base = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    return [base + i for i in range(n)]


class SuiteTask:
    """Common parts: the shapes (or folder) data at ``opts.resolution``."""

    def __init__(self, name: str, opts):
        self.name, self.opts = name, opts

    def datasets(self, cfg):
        return make_datasets(getattr(self.opts, "data", "shapes"), self.opts.resolution, cfg.seed, cfg.eval_size)

    def describe(self) -> dict:
        return {k: v for k, v in vars(self.opts).items() if not callable(v)}


class ReconTask(SuiteTask):
    """AE, DAE, VAE, VQ-VAE, VQ-VAE-2: minimise model(x).loss."""
    default_lr = 1e-3
    ddp_parts = ("forward",)

    def __init__(self, name, opts, cls, cfg_cls):
        super().__init__(name, opts)
        self.cls, self.cfg_cls = cls, cfg_cls

    def build(self):
        return self.cls(apply_overrides(self.cfg_cls(resolution=self.opts.resolution), self.opts.set))

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
            m["sample_recognition_rate"] = recognition_rate(model.sample(seeds=_seeds(len(x), gen)))
        return m

    @torch.no_grad()
    def picture(self, model, held: dict, n: int, gen: torch.Generator) -> torch.Tensor:
        if isinstance(model, VAE):
            return model.sample(seeds=_seeds(n, gen))
        x = held["image"][: max(1, n // 2)]
        return torch.stack([x, model.reconstruct(x)], 1).flatten(0, 1)  # original, reconstruction, ...


class GANTask(SuiteTask):
    default_lr = 2e-4
    ddp_parts = ("generator", "discriminator")

    def build(self):
        return GAN(apply_overrides(GANConfig(resolution=self.opts.resolution), self.opts.set))

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
        return {"sample_recognition_rate": recognition_rate(model.sample(seeds=_seeds(len(held["image"]), gen)))}

    @torch.no_grad()
    def picture(self, model, held, n, gen):
        return model.sample(seeds=_seeds(n, gen))


def prior_label(kind: str, batch: dict):
    """The VQ-VAE-2 priors' conditioning from a data batch: class ids, caption tokens or None."""
    if kind == "class":
        return batch["label"]
    if kind == "caption":
        return tokenize(batch["caption"])
    return None


def prior_labels_for_grid(kind: str, n: int):
    if kind == "class":
        return cycle_labels(n)
    if kind == "caption":
        return tokenize([f"a {class_name(int(k))}" for k in cycle_labels(n)])
    return None


class VQVAE2PriorTask(LossTask, SuiteTask):
    """The VQ-VAE-2 priors, trained on the codes of a frozen VQ-VAE-2 (``--vqvae PATH``)."""
    default_lr = 1e-3
    grad_clip = None

    def __init__(self, name, opts):
        SuiteTask.__init__(self, name, opts)

    def build(self):
        if not getattr(self.opts, "vqvae", None):
            raise ValueError("train vqvae2-prior needs --vqvae PATH (a trained vqvae2 checkpoint)")
        vq = load_pretrained(self.opts.vqvae, expected_cls=VQVAE2)
        kw = dict(channels=64, n_layers=8, label="class", attention_every=4)  # measured on shapes 32x32
        for item in self.opts.set or []:
            k, v = item.split("=", 1)
            if k not in kw:
                raise ValueError(f"--set {k}: vqvae2-prior takes {sorted(kw)}")
            kw[k] = v if k == "label" else int(v)
        gen = VQVAE2Generator.from_vqvae(vq, num_classes=NUM_CLASSES, vocab_size=len(VOCAB), **kw)
        gen.vqvae.requires_grad_(False)
        return gen

    def optimizers(self, model, lr):
        return {"model": torch.optim.Adam(model.prior_parameters(), lr=lr)}

    def prepare(self, batch):
        return dict(batch, label=prior_label(self.kind, batch))

    def step(self, model, batch, opts):
        self.kind = model.config.top.label
        model.vqvae.eval()  # frozen: no EMA / dead-code updates
        logs = super().step(model, batch, opts)
        model.vqvae.eval()
        return logs

    @torch.no_grad()
    def evaluate(self, model, held: dict, gen: torch.Generator) -> dict:
        kind = model.config.top.label
        x = held["image"][:256]
        terms = model.loss({"image": x, "label": prior_label(kind, {k: v[:256] for k, v in held.items()})})
        n = min(64, len(x))
        imgs = model.sample(n, prior_labels_for_grid(kind, n), seeds=_seeds(n, gen))
        labels = cycle_labels(n).tolist() if kind != "none" else None
        return {"heldout_top_nll": float(terms["top_nll"]), "heldout_bottom_nll": float(terms["bottom_nll"]),
                "sample_recognition_rate": recognition_rate(imgs, labels)}

    @torch.no_grad()
    def picture(self, model, held, n, gen):
        return model.sample(n, prior_labels_for_grid(model.config.top.label, n), seeds=_seeds(n, gen))


_DIFFUSION_DEFAULTS = {
    "ddpm": ("ddpm-32", DiffusionConfig(schedule="linear", var_type="fixed_small", loss="simple"), "none", 0.0),
    "iddpm": ("iddpm-32", DiffusionConfig(schedule="cosine", var_type="learned_range", loss="hybrid"), "none", 0.0),
    "adm": ("adm-32", DiffusionConfig(schedule="cosine", var_type="learned_range", loss="hybrid"), "shape", 0.1),
}


class DiffusionTask(LossTask, SuiteTask):
    """DDPM / Improved DDPM / ADM: the model's own ``loss(batch)`` (``diffusion.training_losses`` at
    per-item random steps, per-item label drop for CFG)."""
    default_lr = 5e-4
    default_ema = 0.999  # samples come from an EMA of the weights (Ho et al. 0.9999; ours: short runs)

    def __init__(self, name, opts):
        SuiteTask.__init__(self, name, opts)
        preset, diff, kind, p_uncond = _DIFFUSION_DEFAULTS[name]
        self.kind = getattr(opts, "classes", None) or kind
        self.preset, self.diff, self.p_uncond = preset, diff, p_uncond
        self.bpd_n = getattr(opts, "bpd_n", 16)
        self.sample_steps = getattr(opts, "sample_steps", 50)

    def build(self):
        sets = split_overrides(self.opts.set, {"diffusion": DiffusionConfig, "model": {"p_uncond"},
                                               "unet": UNetConfig})
        diff = apply_overrides(self.diff, sets["diffusion"])
        p_uncond = self.p_uncond
        for item in sets["model"]:
            p_uncond = float(item.split("=", 1)[1])
        if self.kind == "none":
            p_uncond = 0.0
        n = num_labels(self.kind)
        unet = unet_preset(self.preset, image_size=self.opts.resolution, learn_sigma=diff.var_type == "learned_range",
                           num_classes=(n + (1 if p_uncond > 0 else 0)) if n else None)
        unet = apply_overrides(unet, sets["unet"])
        return DiffusionModel(DiffusionModelConfig(unet=unet, diffusion=diff, num_classes=n, p_uncond=p_uncond,
                                                   class_names=label_names(self.kind) if n else ()))

    def prepare(self, batch):
        return dict(batch, label=labels_from_class_ids(self.kind, batch["label"]))

    def _grid_labels(self, model, n):
        return cycle_labels(n, model.num_labels) if model.num_labels else None

    @torch.no_grad()
    def evaluate(self, model, held: dict, gen: torch.Generator) -> dict:
        """Held-out bits/dim (full T-step VLB on ``--bpd-n`` images) and the detector's
        recognition rate of DDIM samples (of their labels for a conditional model)."""
        d = model.diffusion
        kind = kind_of(model.config.class_names) if model.config.class_names else "none"
        x = held["image"][: self.bpd_n]
        y = labels_from_class_ids(kind, held["label"][: self.bpd_n])
        bpd = d.calc_bpd_loop(model.unet, x, clip="static", model_kwargs={"y": y} if y is not None else None,
                              generator=gen)
        n = min(64, len(held["image"]))
        labels = self._grid_labels(model, n)
        imgs = model.sample(labels, seeds=_seeds(n, gen), sampler="ddim", steps=self.sample_steps)
        return {"heldout_bpd": round(bpd["total_bpd"].mean().item(), 4), "bpd_images": len(x),
                "prior_bpd": round(bpd["prior_bpd"].mean().item(), 6), "num_timesteps": d.num_timesteps,
                "var_type": d.var_type, "label_kind": kind,
                "sample_recognition_rate": recognition_rate_of(imgs, kind, labels),
                "sample_images": n, "sampler": f"ddim{self.sample_steps}"}

    @torch.no_grad()
    def picture(self, model, held, n, gen):
        return model.sample(self._grid_labels(model, n), seeds=_seeds(n, gen), sampler="ddim",
                            steps=self.sample_steps)


class ClassifierTask(SuiteTask):
    """The noisy classifier: cross-entropy on x_t = q_sample(x0, t) at uniform random t."""
    default_lr = 5e-4
    ddp_parts = ("forward",)

    def __init__(self, name, opts):
        super().__init__(name, opts)
        self.kind = getattr(opts, "classes", None) or "shape"
        if self.kind == "none":
            raise ValueError("train classifier: --classes must be shape, colour or class, not 'none'")
        self.sets = split_overrides(opts.set, {"diffusion": DiffusionConfig, "classifier": ClassifierConfig})
        self.diff_cfg = apply_overrides(DiffusionConfig(schedule="cosine"), self.sets["diffusion"])
        self.diff = GaussianDiffusion.from_config(self.diff_cfg)

    def build(self):
        cfg = classifier_preset("classifier-32", image_size=self.opts.resolution, num_classes=num_labels(self.kind))
        return NoisyClassifier(apply_overrides(cfg, self.sets["classifier"]))

    def optimizers(self, model, lr):
        return {"model": torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)}

    def _logits(self, model, x0, t, noise=None):
        x_t = self.diff.q_sample(x0, t, noise)
        return model(x_t, self.diff.model_timesteps(t))

    def step(self, model, batch, opts) -> dict:
        from dalle2_fast.seeding import per_sample_randint

        model.train()
        x0, seeds = batch["image"], batch["seeds"]
        y = labels_from_class_ids(kind_for_num_classes(model.config.num_classes), batch["label"])
        t = per_sample_randint(seeds("t"), self.diff.num_timesteps, x0.device)  # item i's own t and noise
        with item_dropout(model, seeds):
            logits = self._logits(model, x0, t, per_sample_randn(seeds("noise"), x0.shape[1:], x0.device, x0.dtype))
            loss = F.cross_entropy(logits, y)
            opts["model"].zero_grad(set_to_none=True)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opts["model"].step()
        return {"loss": loss.item(), "acc": (logits.argmax(1) == y).float().mean().item()}

    @torch.no_grad()
    def evaluate(self, model, held: dict, gen: torch.Generator) -> dict:
        """Held-out accuracy at t = 0, T/4, T/2 and 3T/4."""
        kind = kind_for_num_classes(model.config.num_classes)
        x, y = held["image"], labels_from_class_ids(kind, held["label"])
        T = self.diff.num_timesteps
        m = {"label_kind": kind, "num_timesteps": T, "schedule": self.diff_cfg.schedule}
        for frac in (0, 0.25, 0.5, 0.75):
            t = torch.full((len(x),), int(frac * T), dtype=torch.long)
            noise = torch.randn(x.shape, generator=gen)
            logits = model(self.diff.q_sample(x, t, noise), self.diff.model_timesteps(t))
            m[f"heldout_acc_t{int(frac * T)}"] = round((logits.argmax(1) == y).float().mean().item(), 4)
        return m

    @torch.no_grad()
    def picture(self, model, held, n, gen):
        """Held-out inputs noised at increasing t (what the classifier sees)."""
        x = held["image"][:n]
        t = torch.linspace(0, self.diff.num_timesteps - 1, len(x)).long()
        return self.diff.q_sample(x, t, torch.randn(x.shape, generator=gen)).clamp(-1, 1)


SUITE = {
    "gan": lambda o: GANTask("gan", o),
    "ae": lambda o: ReconTask("ae", o, AutoEncoder, AEConfig),
    "dae": lambda o: ReconTask("dae", o, DenoisingAutoEncoder, DAEConfig),
    "vae": lambda o: ReconTask("vae", o, VAE, VAEConfig),
    "vqvae": lambda o: ReconTask("vqvae", o, VQVAE, VQVAEConfig),
    "vqvae2": lambda o: ReconTask("vqvae2", o, VQVAE2, VQVAE2Config),
    "vqvae2-prior": lambda o: VQVAE2PriorTask("vqvae2-prior", o),
    "ddpm": lambda o: DiffusionTask("ddpm", o),
    "iddpm": lambda o: DiffusionTask("iddpm", o),
    "adm": lambda o: DiffusionTask("adm", o),
    "classifier": lambda o: ClassifierTask("classifier", o),
}

__all__ = ["SUITE", "ReconTask", "GANTask", "VQVAE2PriorTask", "DiffusionTask", "ClassifierTask", "cycle_labels"]
