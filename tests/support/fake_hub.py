"""A Hugging Face hub on 127.0.0.1 (real HTTP, huggingface-hub's own client talks to it through
HF_ENDPOINT): repos of files, resumable ranged downloads, a connection that drops once, 404 error codes."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from haruhi_tui.services import hub as hub_service

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _blob(seed: int, size: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


class FakeHub:
    """Files served in the hub's URL layout with the headers huggingface_hub reads (X-Repo-Commit, ETag...)."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {
            "haruhi/tiny-GGUF": {"tiny-Q4_K_M.gguf": _blob(1, 300_000), "tiny-Q8_0.gguf": _blob(2, 200_000),
                                 "README.md": b"# tiny\n"},
            "haruhi/checkpoint": {"config.json": b'{"model_type": "gpt_oss"}', "model.safetensors": _blob(3, 50_000)},
            "haruhi/many-GGUF": {"a-Q8_0.gguf": _blob(4, 1000), "a-F16.gguf": _blob(5, 2000)},
        }
        self.drop_once: set[str] = set()  # first GET of these files dies half way
        self.lie_about: set[str] = set()  # ETag of these files does not match their bytes
        self.requests: list[tuple[str, str, str | None]] = []

    @staticmethod
    def is_lfs(name: str) -> bool:
        return name.endswith((".gguf", ".safetensors"))

    def etag(self, repo: str, name: str) -> str:
        data = self.repos[repo][name]
        if name in self.lie_about:
            data = data[::-1]
        if self.is_lfs(name):
            return hashlib.sha256(data).hexdigest()
        return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()

    def handler(hub):  # noqa: N805 - the handler class closes over the hub
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _error(self, code: str) -> None:
                self.send_response(404)
                self.send_header("X-Error-Code", code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _resolve(self, head: bool) -> None:
                match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path.split("?")[0])
                hub.requests.append((self.command, self.path, self.headers.get("Range")))
                if not match or match[1] not in hub.repos:
                    return self._error("RepoNotFound")
                repo, name = match[1], match[3]
                if name not in hub.repos[repo]:
                    return self._error("EntryNotFound")
                data = hub.repos[repo][name]
                etag = hub.etag(repo, name)
                start = 0
                if not head and (wanted := self.headers.get("Range")):
                    start = int(re.fullmatch(r"bytes=(\d+)-", wanted)[1])
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{etag}"')
                if hub.is_lfs(name):
                    self.send_header("X-Linked-Etag", f'"{etag}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("Accept-Ranges", "bytes")
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if head:
                    return
                body = data[start:]
                if name in hub.drop_once and not start:
                    hub.drop_once.discard(name)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def do_HEAD(self) -> None:
                self._resolve(head=True)

            def do_GET(self) -> None:
                match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/?]+)(\?.*)?", self.path)
                if not match:
                    return self._resolve(head=False)
                hub.requests.append(("GET", self.path, None))
                if match[1] not in hub.repos:
                    return self._error("RepoNotFound")
                files = hub.repos[match[1]]
                body = json.dumps({"id": match[1], "sha": COMMIT, "siblings": [
                    {"rfilename": name, "size": len(data)} for name, data in files.items()]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub.constants

    fake = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_service.time, "sleep", lambda s: None)
    monkeypatch.setattr(hub_service, "DOWNLOAD_CHUNK", 16 * 1024)
    yield fake
    server.shutdown()
    server.server_close()
