"""A tiny captioned image source for CLIP / unCLIP tests that do not need the shapes dataset:
a coloured square on the left or right of a dark 32x32 image."""
import torch

COLOURS = {"red": (1.0, -1.0, -1.0), "green": (-1.0, 1.0, -1.0), "blue": (-1.0, -1.0, 1.0),
           "yellow": (1.0, 1.0, -1.0)}
SIDES = ("left", "right")
PROMPTS = [f"a {c} square on the {s}" for c in COLOURS for s in SIDES]


def toy_batch(n: int, g: torch.Generator, size: int = 32):
    """(images (n, 3, size, size) in [-1, 1], captions, labels (n,) = index into PROMPTS)."""
    ci = torch.randint(0, len(COLOURS), (n,), generator=g)
    si = torch.randint(0, 2, (n,), generator=g)
    x = -1 + 0.1 * torch.randn(n, 3, size, size, generator=g)
    names = list(COLOURS)
    q = size // 4
    for i in range(n):
        col = torch.tensor(COLOURS[names[ci[i]]]).view(3, 1, 1)
        lo = 1 if si[i] == 0 else size // 2
        x[i, :, q:3 * q, lo:lo + size // 2 - 2] = col
    labels = ci * 2 + si
    return x.clamp(-1, 1), [PROMPTS[j] for j in labels.tolist()], labels
