"""The service's limits, all set by configuration (``dalle2-fast serve`` flags), none by requests."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

MODEL_ID = "dalle2-fast"
MODEL_ALIASES = ("dall-e-2",)  # what OpenAI clients send for this model family


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"         # loopback unless told otherwise
    port: int = 8000
    max_batch: int = 8              # images per forward pass
    max_wait_ms: float = 20.0       # how long the first request of a batch waits for company
    max_queue: int = 256            # images waiting (not yet in a batch); beyond: 429
    max_n: int = 10                 # images per request (OpenAI's limit for dall-e-2)
    max_steps: int = 250            # prior / decoder / upsampler steps per request
    max_prompt_chars: int = 1000    # OpenAI's limit for dall-e-2
    fixed_batch_shape: bool = True  # pad every batch to max_batch: a request's bytes never depend on its company
    url_cache: int = 256            # images kept for response_format=url (oldest dropped)
    max_body_bytes: int = 1 << 20   # a JSON request
    max_upload_bytes: int = 4 << 20  # a variations upload (OpenAI: PNG < 4 MB)

    def __post_init__(self):
        def count(name, lo, hi):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"--{name.replace('_', '-')}: expected an integer in [{lo}, {hi}], got {v!r}")

        count("port", 0, 65535)
        count("max_batch", 1, 1024)
        count("max_queue", 1, 1_000_000)
        count("max_n", 1, 1024)
        count("max_steps", 1, 10_000)
        count("max_prompt_chars", 1, 1_000_000)
        count("url_cache", 0, 1_000_000)
        count("max_body_bytes", 1024, 1 << 30)
        count("max_upload_bytes", 1024, 1 << 30)
        w = self.max_wait_ms
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or not 0 <= w <= 60_000:
            raise ValueError(f"--max-wait-ms: expected a number in [0, 60000], got {w!r}")
        if not isinstance(self.host, str) or not self.host:
            raise ValueError(f"--host: expected an address, got {self.host!r}")

    def public(self) -> dict:
        """The limits a client may see (``GET /config``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("host", "port")}


__all__ = ["ServeConfig", "MODEL_ID", "MODEL_ALIASES"]
