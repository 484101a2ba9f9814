"""A minimal client of the service on the standard library (``http.client``): what the load tests
and the ``serve`` benchmark use to send many concurrent requests without extra dependencies.
For applications, OpenAI's own ``openai`` client works unchanged (``base_url=.../v1``)."""
from __future__ import annotations

import base64
import http.client
import json
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class Reply:
    status: int
    body: dict
    headers: dict
    seconds: float

    def images(self) -> list[bytes]:
        """The PNG bytes of a ``b64_json`` reply."""
        return [base64.b64decode(d["b64_json"]) for d in self.body["data"]]


def request(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None,
            timeout: float = 120.0) -> Reply:
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    t0 = time.perf_counter()
    try:
        conn.request(method, u.path + (f"?{u.query}" if u.query else ""), body=body, headers=headers or {})
        r = conn.getresponse()
        raw = r.read()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()
    try:
        parsed = json.loads(raw) if raw else {}
    except ValueError:
        parsed = {"raw": raw}
    return Reply(r.status, parsed, hdrs, time.perf_counter() - t0)


def generate(base_url: str, timeout: float = 120.0, **fields) -> Reply:
    """``POST /v1/images/generations`` with ``fields`` as the JSON body."""
    return request(base_url + "/v1/images/generations", "POST", json.dumps(fields).encode(),
                   {"Content-Type": "application/json"}, timeout)


def multipart(fields: dict, files: dict) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request."""
    boundary = uuid.uuid4().hex
    parts = []
    for k, v in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    for k, (name, data) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{name}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def variations(base_url: str, image: bytes, timeout: float = 120.0, **fields) -> Reply:
    """``POST /v1/images/variations`` of the PNG ``image``; ``fields`` as form fields."""
    body, ctype = multipart({k: str(v) for k, v in fields.items()}, {"image": ("image.png", image)})
    return request(base_url + "/v1/images/variations", "POST", body, {"Content-Type": ctype}, timeout)


def edits(base_url: str, image: bytes, mask: bytes | None = None, timeout: float = 120.0, **fields) -> Reply:
    """``POST /v1/images/edits`` of the PNG ``image`` (and ``mask``); ``fields`` as form fields."""
    files = {"image": ("image.png", image), **({"mask": ("mask.png", mask)} if mask is not None else {})}
    body, ctype = multipart({k: str(v) for k, v in fields.items()}, files)
    return request(base_url + "/v1/images/edits", "POST", body, {"Content-Type": ctype}, timeout)


__all__ = ["Reply", "request", "generate", "variations", "edits", "multipart"]
