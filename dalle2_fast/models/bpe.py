"""A compact subword tokenizer for small CLIPs: open_clip's BPE cut down to what a training set reaches.

open_clip's byte-level BPE (the 49k merges of ``bpe_simple_vocab_16e6.txt.gz``, shipped with
the package, Radford et al. 2021, after Sennrich et al. 2016) is kept to:

- the 256 byte symbols and their 256 end-of-word forms (so *every* string encodes: a word no
  merge covers falls back to pieces and, at worst, to its bytes), and
- the merges that encoding the ``words`` it is fitted to reaches, in open_clip's rank order.

A word of the fitted list therefore encodes to exactly open_clip's pieces; an unseen word
('teal', 'circles', an emoji) splits into known pieces, never an error. Text is cleaned as
open_clip's ``lower`` cleaning does (HTML entities, whitespace, lower case; ``ftfy`` when it is
installed) and split with open_clip's pattern.

ids: 0 = pad, 1 = start, 2.. = pieces, ``vocab_size - 1`` = end (the largest, so open_clip's
``argmax`` pooling finds it). A text longer than ``context_length - 2`` pieces is truncated
(the end token kept), as open_clip does.
"""
from __future__ import annotations

import gzip
import html
from functools import lru_cache
from typing import Sequence

import torch

from dalle2_fast.models.tokens import PackedTokenizer

_N_MERGES = 49152 - 256 - 2  # the merges open_clip's SimpleTokenizer reads


def _byte_symbols() -> dict[int, str]:
    from open_clip.tokenizer import bytes_to_unicode

    return bytes_to_unicode()


@lru_cache(maxsize=1)
def _pattern():
    import regex

    return regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)


@lru_cache(maxsize=1)
def _open_clip_ranks() -> dict[tuple[str, str], int]:
    from open_clip.tokenizer import default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:_N_MERGES + 1]
    return {tuple(m.split()): r for r, m in enumerate(lines)}


def clean(text: str) -> str:
    """open_clip's 'lower' cleaning: ftfy (when installed), HTML entities, whitespace, lower case."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    return " ".join(html.unescape(html.unescape(text)).split()).lower()


def _bpe(symbols: str, ranks: dict, applied: set | None = None) -> list[str]:
    """Byte-symbol word -> pieces by the lowest-rank merge first (open_clip's ``bpe``)."""
    word = list(symbols[:-1]) + [symbols[-1] + "</w>"]
    while len(word) > 1:
        pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        if applied is not None:
            applied.add(best)
        merged, i = [], 0
        while i < len(word):
            if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                merged.append(word[i] + word[i + 1])
                i += 2
            else:
                merged.append(word[i])
                i += 1
        word = merged
    return word


class BPETokenizer(PackedTokenizer):
    """Byte-level BPE with open_clip's merges restricted to those ``words`` reach. Build with
    :meth:`fit`; callable like open_clip's tokenizers: ``tok(texts) -> LongTensor (B, context_length)``."""

    PAD, SOT = 0, 1

    def __init__(self, merges: Sequence[Sequence[str]], vocab_size: int, context_length: int):
        if context_length < 3:
            raise ValueError(f"BPETokenizer: context_length must be >= 3, got {context_length}")
        self.merges = [tuple(m) for m in merges]
        if any(len(m) != 2 for m in self.merges):
            raise ValueError("BPETokenizer: each merge must be a pair of pieces")
        self._byte = _byte_symbols()
        base = list(self._byte.values())
        pieces = base + [b + "</w>" for b in base] + ["".join(m) for m in self.merges]
        pieces = list(dict.fromkeys(pieces))
        if len(pieces) + 3 > vocab_size:
            raise ValueError(f"BPETokenizer: {len(pieces)} pieces need vocab_size >= {len(pieces) + 3}, got {vocab_size}")
        self.vocab_size, self.context_length = vocab_size, context_length
        self.eot_token_id, self.sot_token_id, self.pad_token_id = vocab_size - 1, self.SOT, self.PAD
        self._ids = {p: i + 2 for i, p in enumerate(pieces)}
        self._pieces = {i: p for p, i in self._ids.items()}
        self._ranks = {m: r for r, m in enumerate(self.merges)}  # the stored order is open_clip's rank order
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def fit(cls, words: Sequence[str], vocab_size: int, context_length: int) -> "BPETokenizer":
        """Keep the open_clip merges that encoding ``words`` (any text; split as open_clip does) applies."""
        ranks, byte = _open_clip_ranks(), _byte_symbols()
        applied: set = set()
        for w in words:
            for tok in _pattern().findall(clean(w)):
                _bpe("".join(byte[b] for b in tok.encode("utf-8")), ranks, applied)
        return cls(sorted(applied, key=ranks.__getitem__), vocab_size, context_length)

    @property
    def n_pieces(self) -> int:
        return len(self._ids)

    def pieces(self, text: str) -> list[str]:
        """The BPE pieces of ``text`` (byte symbols; '</w>' ends a word)."""
        return [self._pieces[i] for i in self.encode(text)]

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"BPETokenizer.encode: text must be a string, got {type(text).__name__}")
        out: list[int] = []
        for tok in _pattern().findall(clean(text)):
            ids = self._cache.get(tok)
            if ids is None:
                sym = "".join(self._byte[b] for b in tok.encode("utf-8"))
                ids = [self._ids[p] for p in _bpe(sym, self._ranks)]
                if len(self._cache) < 10000:
                    self._cache[tok] = ids
            out.extend(ids)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Pieces back to text (special ids dropped): the cleaned text's words, one space apart."""
        inv = {v: k for k, v in self._byte.items()}
        text = "".join(self._pieces[int(i)] for i in ids if int(i) in self._pieces)
        return " ".join(bytes(inv[c] for c in w).decode("utf-8", "replace") for w in text.split("</w>") if w)

    def to_dict(self) -> dict:
        return {"type": "bpe", "merges": [list(m) for m in self.merges], "vocab_size": self.vocab_size,
                "context_length": self.context_length}

    @classmethod
    def from_dict(cls, d: dict) -> "BPETokenizer":
        if d.get("type") != "bpe":
            raise ValueError(f"BPETokenizer.from_dict: expected type 'bpe', got {d.get('type')!r}")
        return cls(d["merges"], d["vocab_size"], d["context_length"])


__all__ = ["BPETokenizer", "clean"]
