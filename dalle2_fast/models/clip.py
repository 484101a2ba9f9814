"""CLIP for unCLIP: an adapter over open_clip, local weights only.

unCLIP (Ramesh et al. 2022, Sec. 2) works in the latent space of a frozen CLIP: the priors map a
caption to a CLIP image embedding ``z_i`` and the decoder inverts it. This module gives every
later stage the three things it reads from CLIP, for any open_clip architecture:

- ``TextEncoding.tokens``: the text transformer's final-layer token features (after
  ``ln_final``, before the projection), ``(B, L, W)``, with ``mask`` ``(B, L)`` for real tokens
  (the prior's "encoded text" and the decoder's cross-attention context);
- ``TextEncoding.embed``: the pooled, projected text embedding ``z_t``, L2-normalised, ``(B, D)``;
- ``encode_image``: the image embedding ``z_i``, L2-normalised, ``(B, D)``.

Embeddings are unit-norm as in the paper (CLIP's cosine space); the diffusion prior rescales them
to unit variance itself.

Weights come only from local files: a directory written by :meth:`ClipAdapter.save_pretrained` (open_clip's
own ``local-dir:`` layout: ``open_clip_config.json`` + ``open_clip_model.safetensors``), or a
weights file together with an open_clip model name. Nothing is ever downloaded; a missing file is
a ``FileNotFoundError`` naming the path.

The embedded default is ``dalle2fast-shapes-tiny`` (``configs/open_clip/``, registered with
``open_clip.add_model_config``): a ViT (32 px, patch 4, 3 layers, width 128) and a 3-layer
text transformer over a word-level vocabulary fitted to the shapes captions (:class:`WordTokenizer`);
about 1.2 M parameters (5 MB in float32). Train it with the CLIP recipe (``dalle2-fast train clip``).
"""
from __future__ import annotations

import json
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_fast.checkpoint import Pretrained, register_model
from dalle2_fast.models.tokens import PackedTokenizer

TINY_SHAPES_MODEL = "dalle2fast-shapes-tiny"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "open_clip"
_registered = False


def register_configs() -> None:
    """Make the package's open_clip configs (``dalle2fast-*``) known to ``open_clip``."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(_CONFIG_DIR)
        _registered = True


@contextmanager
def _offline():
    """Forbid Hugging Face hub access while open_clip builds a model (no downloads, ever)."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class WordTokenizer(PackedTokenizer):
    """A word-level tokenizer for small closed vocabularies (the shapes captions).

    ids: 0 = pad, 1 = start, 2 = unknown word, 3.. = words, ``vocab_size - 1`` = end. The end id is
    the largest, so open_clip's ``argmax`` pooling picks the end-of-text token, as with its BPE.
    Callable like open_clip's tokenizers: ``tok(texts) -> LongTensor (B, context_length)``.
    """

    PAD, SOT, UNK = 0, 1, 2
    _split = re.compile(r"[a-z0-9]+")

    def __init__(self, words: Sequence[str], vocab_size: int, context_length: int):
        words = list(words)
        if len(set(words)) != len(words):
            raise ValueError("WordTokenizer: words must be unique")
        if len(words) + 4 > vocab_size:
            raise ValueError(
                f"WordTokenizer: {len(words)} words need vocab_size >= {len(words) + 4}, got {vocab_size}")
        if context_length < 3:
            raise ValueError(f"WordTokenizer: context_length must be >= 3, got {context_length}")
        self.words = words
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.eot_token_id = vocab_size - 1
        self.sot_token_id = self.SOT
        self.pad_token_id = self.PAD
        self._ids = {w: i + 3 for i, w in enumerate(words)}

    @classmethod
    def fit(cls, captions: Sequence[str], vocab_size: int, context_length: int) -> "WordTokenizer":
        """The sorted set of words in ``captions``."""
        words = sorted({w for c in captions for w in cls._split.findall(c.lower())})
        return cls(words, vocab_size, context_length)

    def split(self, text: str) -> list[str]:
        return self._split.findall(text.lower())

    def unknown_words(self, text: str) -> list[str]:
        return [w for w in self.split(text) if w not in self._ids]

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(w, self.UNK) for w in self.split(text)]

    def to_dict(self) -> dict:
        return {"type": "word", "words": self.words, "vocab_size": self.vocab_size,
                "context_length": self.context_length}

    @classmethod
    def from_dict(cls, d: dict) -> "WordTokenizer":
        if d.get("type") != "word":
            raise ValueError(f"WordTokenizer.from_dict: expected type 'word', got {d.get('type')!r}")
        return cls(d["words"], d["vocab_size"], d["context_length"])


@dataclass
class TextEncoding:
    """CLIP's view of a batch of captions.

    tokens: (B, L, W) final-layer token features; mask: (B, L) bool, True on real tokens
    (start .. end); embed: (B, D) pooled projected embedding z_t, L2-normalised; raw_embed:
    the same before normalisation (what Karlo's and Kandinsky's prior and decoder read), or None.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    embed: torch.Tensor
    raw_embed: torch.Tensor | None = None


@dataclass(frozen=True)
class ClipConfig:
    """What builds a :class:`ClipAdapter` (stored with every checkpoint of it).

    model_name: an open_clip architecture (``open_clip.list_models()`` or the package's
    ``dalle2fast-*``), or a label when ``open_clip`` holds the config itself; open_clip: the
    open_clip config as JSON text (``{"model_cfg": ..., "preprocess_cfg": ...}``), '' = the
    registered config of ``model_name``; tokenizer: a :class:`WordTokenizer` or a
    :class:`~dalle2_fast.models.bpe.BPETokenizer` as JSON text (``to_dict``), '' =
    open_clip's tokenizer for the architecture; text_only: the weights hold the text tower only
    (e.g. a transformers ``CLIPTextModelWithProjection``): the image tower is not built and
    ``encode_image`` raises."""

    model_name: str = TINY_SHAPES_MODEL
    open_clip: str = ""
    tokenizer: str = ""
    text_only: bool = False


def _build_open_clip(config: ClipConfig) -> tuple[nn.Module, dict]:
    """A randomly initialised open_clip model for ``config`` and its model config dict."""
    import tempfile

    import open_clip

    register_configs()
    with _offline():
        if config.open_clip:
            full = json.loads(config.open_clip)
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / CONFIG_FILE).write_text(json.dumps(full))
                logging.disable(logging.WARNING)  # open_clip warns that the (empty) dir has no weights
                try:
                    model = open_clip.create_model(f"local-dir:{d}", load_weights=False)
                finally:
                    logging.disable(logging.NOTSET)
            return model, full["model_cfg"]
        cfg = open_clip.get_model_config(config.model_name)
        if cfg is None:
            raise ValueError(f"ClipAdapter: unknown open_clip model {config.model_name!r}")
        model = open_clip.create_model(config.model_name, pretrained=None, load_weights=False,
                                       pretrained_text=False, pretrained_image=False)
        return model, cfg


def tokenizer_from_dict(d: dict):
    """A stored tokenizer: ``{"type": "word", ...}`` (:class:`WordTokenizer`) or ``{"type": "bpe",
    ...}`` (:class:`~dalle2_fast.models.bpe.BPETokenizer`)."""
    from dalle2_fast.models.bpe import BPETokenizer

    kinds = {"word": WordTokenizer, "bpe": BPETokenizer}
    if d.get("type") not in kinds:
        raise ValueError(f"ClipAdapter: unknown tokenizer type {d.get('type')!r}, expected one of {sorted(kinds)}")
    return kinds[d["type"]].from_dict(d)


def _own_tokenizer(tok) -> bool:
    """A tokenizer of this package (stored with the model), not open_clip's."""
    from dalle2_fast.models.bpe import BPETokenizer

    return isinstance(tok, (WordTokenizer, BPETokenizer))


def _tokenizer_for(config: ClipConfig, model_cfg: dict):
    import open_clip

    if config.tokenizer:
        return tokenizer_from_dict(json.loads(config.tokenizer))
    if config.model_name.startswith("dalle2fast-"):
        tc = model_cfg.get("text_cfg", {})
        raise ValueError(f"ClipAdapter: {config.model_name} needs a WordTokenizer (fit one on the training captions "
                         f"with WordTokenizer.fit(captions, vocab_size={tc.get('vocab_size')}, "
                         f"context_length={tc.get('context_length')}))")
    with _offline():
        if config.open_clip and open_clip.get_model_config(config.model_name) is None:
            hf = json.loads(config.open_clip)["model_cfg"].get("text_cfg", {}).get("hf_tokenizer_name")
            return open_clip.get_tokenizer(hf) if hf else open_clip.get_tokenizer("ViT-B-32")
        return open_clip.get_tokenizer(config.model_name)


def _read_weights(path: Path) -> dict:
    """A state dict from a local weights file: safetensors, or a torch file read with
    ``weights_only=True`` (never a full unpickle)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"ClipAdapter: {path} does not hold a state dict")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


@register_model("clip")
class ClipAdapter(Pretrained, nn.Module):
    """A frozen-or-trainable open_clip model plus its tokenizer, with unCLIP's encoders.

    Images are ``(B, 3, H, W)`` floats in ``[-1, 1]`` (the diffusion convention); they are resized
    to the model's input size and normalised with the model's mean/std here.
    """

    config_class = ClipConfig

    def __init__(self, config: ClipConfig):
        super().__init__()
        if not isinstance(config, ClipConfig):
            raise TypeError(f"ClipAdapter: config must be a ClipConfig, got {type(config).__name__}")
        self.config = config
        model, model_cfg = _build_open_clip(config)
        if config.text_only:
            model.visual = _NoImageTower()
        self.model = model
        self.model_cfg = model_cfg
        self.model_name = config.model_name
        self.tokenizer = _tokenizer_for(config, model_cfg)
        _check_tokenizer(self.tokenizer, model_cfg, config.model_name)
        pp = getattr(model.visual, "preprocess_cfg", None) or {}
        size = pp.get("size", model_cfg["vision_cfg"].get("image_size", 224))
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        mean = pp.get("mean", (0.48145466, 0.4578275, 0.40821073))
        std = pp.get("std", (0.26862954, 0.26130258, 0.27577711))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._custom_text = hasattr(model, "text")
        if self._custom_text:
            model.text.output_tokens = True

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def create(cls, model_name: str = TINY_SHAPES_MODEL, tokenizer=None) -> "ClipAdapter":
        """A randomly initialised open_clip architecture (for training), e.g. the tiny shapes one.

        ``tokenizer``: defaults to open_clip's tokenizer for the architecture; the tiny config needs
        a :class:`WordTokenizer` whose ``vocab_size`` and ``context_length`` match the config.
        """
        if tokenizer is not None and not _own_tokenizer(tokenizer):
            raise TypeError("ClipAdapter.create: tokenizer must be a WordTokenizer, a BPETokenizer or None "
                            "(open_clip's own)")
        register_configs()
        import open_clip

        cfg = open_clip.get_model_config(model_name)
        if cfg is None:
            raise ValueError(f"ClipAdapter.create: unknown open_clip model {model_name!r}")
        _check_tokenizer(tokenizer, cfg, model_name)
        tok = json.dumps(tokenizer.to_dict()) if tokenizer is not None else ""
        return cls(ClipConfig(model_name=model_name, tokenizer=tok))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, model_name: str | None = None,
                        map_location: str | torch.device = "cpu", quick_gelu: bool | None = None) -> "ClipAdapter":
        """Load CLIP from local files only.

        path: a directory written by :meth:`save_pretrained` (open_clip's own ``local-dir`` layout:
        ``open_clip_config.json`` + weights; any open_clip local-dir works), a training checkpoint
        of the package (``config.json`` + ``model.safetensors``), or a weights file
        (``.safetensors``/``.pt``/``.bin``) with ``model_name`` naming its open_clip architecture
        (e.g. ``"ViT-B-32"``), or OpenAI's TorchScript archive (``ViT-L-14.pt``, read safely by
        :func:`dalle2_fast.interop.openai_clip.load_openai_clip`; ``model_name`` optional).

        QuickGELU: OpenAI's weights need it, and an architecture that open_clip also has as
        ``<name>-quickgelu`` (every one OpenAI released) cannot be told apart by its keys. An
        archive, or a state dict carrying OpenAI's ``input_resolution``/``context_length``/
        ``vocab_size`` entries, is OpenAI's (QuickGELU). For any other weights file of such an
        architecture say which with ``quick_gelu`` (True: OpenAI's or other QuickGELU weights;
        False: GELU, e.g. LAION's) — otherwise ValueError, never a silent guess.
        """
        from dalle2_fast.checkpoint import load_pretrained, load_state_strict

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"ClipAdapter: no CLIP weights at {path} (weights are never downloaded; "
                                    "pass a local file or directory)")
        if path.is_dir() and (path / "config.json").is_file() and not (path / CONFIG_FILE).is_file():
            return load_pretrained(path, expected_cls=cls, map_location=map_location)
        if path.is_dir():
            cfg_path = path / CONFIG_FILE
            if not cfg_path.is_file():
                raise FileNotFoundError(f"ClipAdapter: {path} is missing {CONFIG_FILE}")
            weights = [p for pat in ("*.safetensors", "*.bin", "*.pth", "*.pt") for p in sorted(path.glob(pat))]
            if not weights:
                raise FileNotFoundError(f"ClipAdapter: {path} has a config but no weights file (expected {WEIGHTS_FILE})")
            full = json.loads(cfg_path.read_text())
            if not isinstance(full, dict) or "model_cfg" not in full:
                raise ValueError(f"ClipAdapter: {cfg_path} is not an open_clip config (no 'model_cfg')")
            extra = full.pop("dalle2_fast", {})
            tok = extra.get("tokenizer")
            config = ClipConfig(model_name=extra.get("model_name", str(path)), open_clip=json.dumps(full),
                                tokenizer=json.dumps(tok) if tok else "", text_only=bool(extra.get("text_only")))
            wfile = path / WEIGHTS_FILE if (path / WEIGHTS_FILE).is_file() else weights[0]
        else:
            from dalle2_fast.interop import openai_clip

            if openai_clip.is_torchscript_archive(path):
                if quick_gelu is False:
                    raise ValueError(f"ClipAdapter: {path} is OpenAI's TorchScript archive, whose weights need "
                                     "QuickGELU; quick_gelu=False contradicts it")
                return openai_clip.load_openai_clip(path, model_name).to(map_location)
            state = _read_weights(path) if path.stat().st_size else {}
            if any(k in state for k in openai_clip.OPENAI_META_KEYS):  # taken from OpenAI's archive
                if quick_gelu is False:
                    raise ValueError(f"ClipAdapter: {path} holds OpenAI's weights (it has OpenAI's "
                                     f"{list(openai_clip.OPENAI_META_KEYS)} entries), which need QuickGELU; "
                                     "quick_gelu=False contradicts it")
                return openai_clip.load_openai_clip(path, model_name).to(map_location)
            if model_name is None:
                raise ValueError(f"ClipAdapter: {path} is a weights file; pass model_name (its open_clip "
                                 f"architecture, one of open_clip.list_models())")
            register_configs()
            model_name = openai_clip.activation_checked_name(model_name, quick_gelu, path)
            adapter = cls(ClipConfig(model_name=model_name))
            load_state_strict(adapter.model, state, str(path))
            return adapter.to(map_location)
        adapter = cls(config)
        load_state_strict(adapter.model, _read_weights(wfile), str(wfile))
        return adapter.to(map_location)

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write an open_clip ``local-dir`` (loadable by ``open_clip.create_model('local-dir:...')``
        and by :meth:`from_pretrained`), atomically file by file."""
        from safetensors.torch import save_file

        from dalle2_fast.checkpoint import atomic_write, atomic_write_text

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        extra = {"model_name": self.model_name}
        if self.config.text_only:
            extra["text_only"] = True
        if _own_tokenizer(self.tokenizer):
            extra["tokenizer"] = self.tokenizer.to_dict()
        pp = {k: (list(v) if isinstance(v, tuple) else v)
              for k, v in getattr(self.model.visual, "preprocess_cfg", {}).items()}
        cfg = {"model_cfg": self.model_cfg, "preprocess_cfg": pp, "dalle2_fast": extra}
        state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        atomic_write(path / WEIGHTS_FILE, lambda p: save_file(state, str(p)))
        atomic_write_text(path / CONFIG_FILE, json.dumps(cfg, indent=2))
        return path

    # ---- training -----------------------------------------------------------------------------
    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """The contrastive loss (open_clip's ``ClipLoss``: symmetric InfoNCE over the batch, Radford
        et al. 2021, Fig. 3; under ``torch.distributed`` features are gathered across ranks).
        batch: ``image`` (B, 3, H, W) in [-1, 1], ``caption`` list of B strings."""
        import torch.distributed as dist
        from open_clip.loss import ClipLoss

        on = dist.is_available() and dist.is_initialized()
        loss_fn = ClipLoss(local_loss=False, gather_with_grad=on, cache_labels=False,
                           rank=dist.get_rank() if on else 0, world_size=dist.get_world_size() if on else 1)
        img, txt, scale = self(batch["image"], self.tokenize(list(batch["caption"])))
        return {"loss": loss_fn(img, txt, scale), "logit_scale": scale.detach()}

    # ---- properties ---------------------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        return int(self.model_cfg["embed_dim"])

    @property
    def text_width(self) -> int:
        """W, the width of :attr:`TextEncoding.tokens`."""
        if self._custom_text:
            t = self.model.text
            return int(getattr(t, "width", None) or t.transformer.width)
        return int(self.model.transformer.width)

    @property
    def context_length(self) -> int:
        return int(self.model.context_length if not self._custom_text else self.model.text.context_length)

    # ---- encoders -----------------------------------------------------------------------------
    def tokenize(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """Token ids, (B, context_length) int64, on this module's device."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not all(isinstance(p, str) for p in prompts):
            raise TypeError("ClipAdapter.tokenize: prompts must be a string or a list of strings")
        return self.tokenizer(list(prompts), context_length=self.context_length).to(self.mean.device)

    def _pad_id(self) -> int:
        if self._custom_text:
            return int(getattr(self.model.text, "pad_id", 0) or 0)
        return 0

    def encode_text(self, text: str | Sequence[str] | torch.Tensor) -> TextEncoding:
        """Token features, mask and normalised pooled embedding for prompts or token ids (B, L)."""
        ids = text if isinstance(text, torch.Tensor) else self.tokenize(text)
        if ids.dim() != 2 or ids.dtype != torch.long:
            raise ValueError(f"ClipAdapter.encode_text: token ids must be (B, L) int64, got "
                             f"{tuple(ids.shape)} {ids.dtype}")
        if self._custom_text:
            pooled, tokens = self.model.text(ids)
        else:
            m = self.model
            cast = m.transformer.get_cast_dtype()
            x = m.token_embedding(ids).to(cast) + m.positional_embedding.to(cast)  # (B, L, W)
            x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask))
            tokens = x
            pooled = x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)]  # end token
            if m.text_pool_type != "argmax":
                from open_clip.transformer import text_global_pool

                pooled = text_global_pool(x, ids, m.text_pool_type, getattr(m, "text_eos_id", None))
            if m.text_projection is not None:
                pooled = (m.text_projection(pooled) if isinstance(m.text_projection, nn.Linear)
                          else pooled @ m.text_projection)
        if self._custom_text:
            mask = ids != self._pad_id()
        else:  # up to the end token (argmax: the largest id), whatever ids a prompt's own tokens have
            mask = torch.arange(ids.shape[1], device=ids.device)[None] <= ids.argmax(dim=-1)[:, None]
        mask[:, 0] = True
        raw = pooled.float()
        return TextEncoding(tokens=tokens.float(), mask=mask, embed=F.normalize(raw, dim=-1), raw_embed=raw)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> the model's input: resized, mean/std normalised."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"ClipAdapter: images must be (B, 3, H, W), got {tuple(images.shape)}")
        x = (images.float() + 1) / 2
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bicubic", align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """z_i: (B, D), L2-normalised (``normalize=False``: CLIP's raw projected embedding), for
        images (B, 3, H, W) in [-1, 1]."""
        if self.config.text_only:
            raise ValueError(f"ClipAdapter: {self.model_name} holds CLIP's text tower only (its weights came without "
                             "an image encoder): it cannot encode images")
        z = self.model.encode_image(self.preprocess(images)).float()
        return F.normalize(z, dim=-1) if normalize else z

    def forward(self, images: torch.Tensor, text_ids: torch.Tensor):
        """(image_features, text_features, logit_scale): what open_clip's ``ClipLoss`` takes."""
        return (self.encode_image(images), self.encode_text(text_ids).embed, self.model.logit_scale.exp())


class _NoImageTower(nn.Module):
    """Stands in for open_clip's ``visual`` in a text-only adapter (no parameters)."""

    preprocess_cfg: dict = {}

    def forward(self, *args, **kw):
        raise ValueError("ClipAdapter: this CLIP holds the text tower only: it cannot encode images")


def _check_tokenizer(tokenizer, cfg: dict, name: str) -> None:
    tc = cfg["text_cfg"]
    if tokenizer is None:
        if name.startswith("dalle2fast-"):
            raise ValueError(f"ClipAdapter.create: {name} needs a WordTokenizer (fit one on the training captions "
                             f"with WordTokenizer.fit(captions, vocab_size={tc.get('vocab_size')}, "
                             f"context_length={tc.get('context_length')}))")
        return
    vs = getattr(tokenizer, "vocab_size", None)
    if vs is not None and vs != tc.get("vocab_size", vs):
        raise ValueError(f"ClipAdapter.create: tokenizer vocab_size {vs} != model text_cfg.vocab_size "
                         f"{tc.get('vocab_size')}")
