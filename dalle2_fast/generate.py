"""Sampling any trained checkpoint of the suite under the package's one seed rule: image k of a
call with seed s is the image of seed s + k, whatever the batch size or number of processes, so
any image can be redrawn alone from the seed its file records. Used by ``dalle2-fast sample
--checkpoint`` and by batch jobs.

- diffusion models (DDPM / IDDPM / ADM): sampler, steps, eta, classifier-free guidance or
  classifier guidance, class labels (by id or by the class names the checkpoint stores);
- GAN and VAE: latents from the seeds;
- the VQ-VAE-2 generator: labels ('<colour> <shape>' or ids), temperature;
- autoencoders (AE, DAE, VQ-VAE, VQ-VAE-2): reconstructions of held-out shapes images (image k is
  item k of the shapes data of seed s, then its reconstruction).
"""
from __future__ import annotations

from pathlib import Path

import torch

from dalle2_fast.checkpoint import CheckpointError, load_pretrained
from dalle2_fast.data.shapes import COLOUR_NAMES, NUM_CLASSES, SHAPES, ShapesDataset, class_id, class_name, tokenize
from dalle2_fast.models import GAN, VAE, VQVAE2Generator
from dalle2_fast.models.classifier import NoisyClassifier
from dalle2_fast.models.diffusion_model import DiffusionModel
from dalle2_fast.seeding import check_seed

GUIDANCES = ("none", "cfg", "classifier")


def resolve_checkpoint(path: str | Path, name: str = "--checkpoint") -> Path:
    """A checkpoint path, or a training run directory (its ``final/``)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{name}: no such file or directory {str(p)!r}")
    if p.is_dir() and not (p / "config.json").is_file() and (p / "final" / "config.json").is_file():
        return p / "final"
    return p


def parse_class_label(text: str, names: tuple[str, ...], num_classes: int, name: str = "--label") -> int:
    """An integer id in [0, num_classes) or one of ``names`` (case and spacing ignored)."""
    t = " ".join(str(text).lower().split())
    if not t:
        raise ValueError(f"{name}: expected a class id or name, got an empty string")
    if t.lstrip("-").isdigit():
        k = int(t)
        if not 0 <= k < num_classes:
            raise ValueError(f"{name}: class ids are 0..{num_classes - 1}, got {k}")
        return k
    norm = [" ".join(n.lower().split()) for n in names]
    if t in norm:
        return norm.index(t)
    hint = f"one of {list(names)}" if names else "an integer id (this checkpoint stores no class names)"
    raise ValueError(f"{name}: expected {hint}, got {text!r}")


def parse_shapes_class(text: str, name: str = "--label") -> int:
    """'red circle' (either order) or an id -> a shapes class id (colour x shape)."""
    t = str(text).strip().lower()
    if t.isdigit():
        k = int(t)
        if not 0 <= k < NUM_CLASSES:
            raise ValueError(f"{name}: class ids are 0..{NUM_CLASSES - 1}, got {k}")
        return k
    words = t.split()
    col = [w for w in words if w in COLOUR_NAMES]
    shp = [w for w in words if w in SHAPES]
    if len(col) != 1 or len(shp) != 1 or len(words) != 2:
        raise ValueError(f"{name}: expected a class id or '<colour> <shape>' with colour in {COLOUR_NAMES} "
                         f"and shape in {SHAPES}, got {text!r}")
    return class_id(shp[0], col[0])


class CheckpointSampler:
    """``CheckpointSampler(path, **options)(seeds) -> images (n, C, S, S) in [-1, 1]``; ``settings``
    is what every written image records. Options (each checked here, before any sampling):
    sampler, steps, eta, guidance ('none' | 'cfg' | 'classifier'), scale, classifier (a path),
    label (text or id; default: cycling through the classes), temperature."""

    def __init__(self, path: str | Path, *, sampler: str = "ddim", steps: int = 50, eta: float = 0.0,
                 guidance: str = "none", scale: float = 1.0, classifier: str | Path | None = None,
                 label: str | None = None, temperature: float = 1.0):
        self.path = resolve_checkpoint(path)
        self.model = load_pretrained(self.path).eval()
        m = self.model
        diffusion = isinstance(m, DiffusionModel)
        if guidance not in GUIDANCES:
            raise ValueError(f"--guidance: expected one of {GUIDANCES}, got {guidance!r}")
        if not diffusion:
            for opt, v, default in (("--guidance", guidance, "none"), ("--classifier", classifier, None),
                                    ("--scale", scale, 1.0), ("--eta", eta, 0.0)):
                if v != default:
                    raise ValueError(f"{opt}: applies to diffusion checkpoints, not to a {type(m).__name__}")
        if temperature != 1.0 and not isinstance(m, VQVAE2Generator):
            raise ValueError(f"--temperature: applies to the VQ-VAE-2 generator, not to a {type(m).__name__}")
        if not (temperature > 0):
            raise ValueError(f"--temperature: expected a positive number, got {temperature!r}")
        self.clf = self.clf_path = None
        if guidance == "classifier":
            if classifier is None:
                raise ValueError("--guidance classifier needs --classifier CKPT")
            self.clf_path = resolve_checkpoint(classifier, "--classifier")
            self.clf = load_pretrained(self.clf_path, expected_cls=NoisyClassifier).eval()
        elif classifier is not None:
            raise ValueError("--classifier: only used with --guidance classifier")
        if guidance == "cfg" and diffusion and m.null_label is None:
            raise ValueError("--guidance cfg: this checkpoint was trained without label dropout (p_uncond = 0)")
        self.opts = dict(sampler=sampler, steps=steps, eta=eta, guidance=guidance, scale=scale, temperature=temperature)
        self.label = self._label(label)
        if diffusion:
            if sampler not in ("ddpm", "ddim", "dpmpp"):
                raise ValueError(f"--sampler: expected ddpm, ddim or dpmpp, got {sampler!r}")
            if eta and sampler != "ddim":
                raise ValueError(f"--eta: applies to --sampler ddim only, got --sampler {sampler}")

    def _label(self, label):
        m = self.model
        if label is None:
            return None
        if isinstance(m, DiffusionModel):
            k = m.config.num_classes or (self.clf.config.num_classes if self.clf is not None else 0)
            if k == 0:
                raise ValueError("--label: this model is unconditional (and no classifier guides it)")
            names = m.config.class_names if m.config.num_classes else self._classifier_names(k)
            return parse_class_label(label, names, k)
        if isinstance(m, VQVAE2Generator):
            if m.config.top.label == "none":
                raise ValueError("--label: this generator is unconditional")
            return parse_shapes_class(label)
        raise ValueError(f"--label: a {type(m).__name__} takes no label")

    @staticmethod
    def _classifier_names(k: int) -> tuple[str, ...]:
        """A noisy classifier stores only its class count: the shapes label kind with that many
        classes names them (the recipes train classifiers on the shapes data)."""
        from dalle2_fast.data.labels import kind_for_num_classes, label_names

        try:
            return label_names(kind_for_num_classes(k))
        except ValueError:
            return ()

    @property
    def settings(self) -> dict:
        out = {"checkpoint": str(self.path), "model_type": self.model.model_type}
        if isinstance(self.model, DiffusionModel):
            out.update({k: self.opts[k] for k in ("sampler", "steps", "eta", "guidance", "scale")})
        if isinstance(self.model, VQVAE2Generator):
            out["temperature"] = self.opts["temperature"]
        if self.label is not None:
            out["label"] = self.label
        return out

    def labels_for(self, seeds, first: int) -> torch.Tensor | None:
        """Image k's label: the fixed one, or class (first + i) % classes for a grid."""
        m = self.model
        n = len(seeds)
        if isinstance(m, DiffusionModel):
            k = m.config.num_classes or (self.clf.config.num_classes if self.clf is not None else 0)
        elif isinstance(m, VQVAE2Generator) and m.config.top.label != "none":
            k = NUM_CLASSES
        else:
            return None
        if k == 0:
            return None
        if self.label is not None:
            return torch.full((n,), self.label, dtype=torch.long)
        return (torch.arange(first, first + n) % k).long()

    @property
    def reconstructs(self) -> bool:
        """An autoencoder: its 'samples' are reconstructions of :meth:`inputs`."""
        return hasattr(self.model, "reconstruct") and not isinstance(self.model, (GAN, VAE, VQVAE2Generator))

    def inputs(self, seeds) -> torch.Tensor:
        """The held-out shapes images an autoencoder reconstructs: item 0 of the data of each seed."""
        res = self.model.config.resolution
        return torch.stack([ShapesDataset(res, seed=int(s), size=1).item(0)["image"] for s in seeds])

    @torch.no_grad()
    def __call__(self, seeds, first: int = 0, progress: bool = False) -> torch.Tensor:
        """Images for ``seeds`` (image i from seeds[i]); ``first``: the index of seeds[0] in the call
        (picks the cycling labels and the reconstructed items)."""
        for s in seeds:
            check_seed(s, "--seed")
        m, o = self.model, self.opts
        labels = self.labels_for(seeds, first)
        if isinstance(m, DiffusionModel):
            cfg = o["scale"] if o["guidance"] == "cfg" else 1.0
            return m.sample(labels, seeds=list(seeds), sampler=o["sampler"], steps=o["steps"], eta=o["eta"],
                            guidance_scale=cfg, classifier=self.clf,
                            classifier_scale=o["scale"] if o["guidance"] == "classifier" else 0.0, progress=progress)
        if isinstance(m, (GAN, VAE)):
            return m.sample(seeds=list(seeds))
        if isinstance(m, VQVAE2Generator):
            kind = m.config.top.label
            lab = None
            if kind == "class":
                lab = labels
            elif kind == "caption":
                lab = tokenize([f"a {class_name(int(k))}" for k in labels])
            return m.sample(len(seeds), lab, temperature=o["temperature"], seeds=list(seeds))
        if self.reconstructs:  # autoencoders: item 0 of the shapes data of seed s, reconstructed
            return m.reconstruct(self.inputs(seeds))
        raise CheckpointError(f"{self.path}: don't know how to sample a {type(m).__name__}")


__all__ = ["CheckpointSampler", "resolve_checkpoint", "parse_class_label", "parse_shapes_class", "GUIDANCES"]
