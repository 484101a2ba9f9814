"""The layer rule of docs/architecture.md, enforced: a module never imports a layer above it.
Every ``import`` / ``from ... import`` in the package's source (module level or inside functions)
is checked, so a lazy upward import fails too."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "dalle2_fast"

# layer -> the package parts it must never import
FORBIDDEN = {
    "triton": {"ops", "nn", "diffusion", "models", "interop", "pipeline", "generate", "recipes", "train", "cli",
               "jobs", "serve", "data", "eval", "bench"},
    "ops": {"nn", "diffusion", "models", "interop", "pipeline", "generate", "recipes", "train", "cli", "jobs",
            "serve", "data", "eval", "bench"},
    "nn": {"diffusion", "models", "interop", "pipeline", "generate", "recipes", "train", "cli", "jobs", "serve",
           "data", "eval", "bench"},
    "diffusion": {"models", "interop", "pipeline", "generate", "recipes", "train", "cli", "jobs", "serve", "data",
                  "eval", "bench"},
    "models": {"pipeline", "generate", "recipes", "train", "cli", "jobs", "serve", "data", "eval", "bench"},
    "interop": {"pipeline", "generate", "recipes", "train", "cli", "jobs", "serve", "eval", "bench"},
    "data": {"nn", "diffusion", "models", "interop", "pipeline", "generate", "recipes", "train", "cli", "jobs",
             "serve", "bench"},
    "eval": {"nn", "diffusion", "models", "interop", "pipeline", "generate", "recipes", "train", "cli", "jobs",
             "serve", "bench"},
    "seeding": {"ops", "nn", "diffusion", "models", "interop", "pipeline", "generate", "recipes", "train", "cli",
                "jobs", "serve", "data", "eval", "bench"},
    "files": {"ops", "nn", "diffusion", "models", "interop", "pipeline", "generate", "recipes", "train", "cli",
              "jobs", "serve", "data", "eval", "bench", "checkpoint"},
    "checkpoint": {"nn", "diffusion", "interop", "pipeline", "generate", "recipes", "train", "cli", "jobs", "serve",
                   "data", "eval", "bench"},
    "pipeline": {"generate", "recipes", "train", "cli", "jobs", "serve", "bench"},
    "inpainting": {"generate", "recipes", "train", "cli", "jobs", "serve", "bench"},  # the pipeline's edits
    "manipulations": {"generate", "recipes", "train", "cli", "jobs", "serve", "bench"},  # the pipeline's CLIP-latent edits
    "generate": {"recipes", "train", "cli", "jobs", "serve", "bench"},
    "train": {"pipeline", "generate", "recipes", "cli", "jobs", "serve", "bench"},
    "recipes": {"cli", "jobs", "serve", "bench"},
    "jobs": {"cli", "serve", "recipes", "bench"},  # batch jobs: pipeline/generate/data/train.distributed below
    "serve": {"cli", "recipes", "jobs", "bench"},  # the service: the pipeline and data below
}


def _layer(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for a in node.names:  # `from dalle2_fast import ops`
                if node.module == "dalle2_fast":
                    yield node.lineno, f"dalle2_fast.{a.name}"


def test_no_module_imports_a_layer_above_it():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        layer = _layer(path)
        forbidden = FORBIDDEN.get(layer)
        if not forbidden:
            continue
        for line, mod in _imports(path):
            parts = mod.split(".")
            if parts[0] == "dalle2_fast" and len(parts) > 1 and parts[1] in forbidden:
                bad.append(f"{path.relative_to(PKG.parent)}:{line}: layer '{layer}' imports {mod}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_every_layer_named_exists(layer):
    assert (PKG / layer).is_dir() or (PKG / f"{layer}.py").is_file()
