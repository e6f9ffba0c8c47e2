"""The part of TorchServe's context the handler writes to (status, content type, headers per request index), for
running serve/handler.py in-process: tests and the GPU check's serve section (bench/gpu_serve.py)."""
from __future__ import annotations


class Context:
    """The part of TorchServe's context the handler writes to."""

    def __init__(self):
        self.status: dict[int, int] = {}
        self.headers: dict[int, dict[str, str]] = {}

    def set_response_status(self, code, phrase, idx=0):
        self.status[idx] = code

    def set_response_content_type(self, idx, value):
        self.headers.setdefault(idx, {})["Content-Type"] = value

    def set_response_header(self, idx, key, value):
        self.headers.setdefault(idx, {})[key] = value
