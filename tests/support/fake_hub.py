"""A Hugging Face hub on 127.0.0.1 (real HTTP, huggingface-hub's own client talks to it through
HF_ENDPOINT): model and dataset repos of files, resumable ranged downloads, a connection that drops once,
404 error codes. The two ChatHaruhi character datasets are there in their real layout, small."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import numpy as np
import pytest

from haruhi_tui.services import hub as hub_service

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _blob(seed: int, size: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def _vector(seed: int, dim: int = 256) -> str:
    """An embedding as ChatHaruhi stores it: big-endian float32s, base64."""
    values = np.random.default_rng(seed).random(dim)
    return base64.b64encode(struct.pack(f"!{dim}f", *values)).decode("ascii")


def character_file(prompt: str, scenes: list[str], columns: tuple[str, ...], *, encode_from: int = -1) -> bytes:
    """A ``<name>.jsonl`` as ChatHaruhi's ``package_role`` writes it: the role prompt row (every embedding column
    says ``system_prompt``), the reserved ``config`` row, then one row per scene with its vectors. Scenes from
    ``encode_from`` on carry their text base64-encoded in ``enc_text`` (ChatHaruhi 3.0 reads both)."""
    rows = [{"text": prompt, **{c: "system_prompt" for c in columns}},
            {"text": "Reserve Config Setting Here", **{c: "config" for c in columns}}]
    for i, scene in enumerate(scenes):
        text = ({"enc_text": base64.b64encode(scene.encode("utf-8")).decode("ascii")} if 0 <= encode_from <= i
                else {"text": scene})
        rows.append({**text, **{c: _vector(i * 7 + j) for j, c in enumerate(columns)}})
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def chatharuhi_datasets() -> dict[str, dict[str, bytes]]:
    """silk-road/ChatHaruhi-RolePlaying (Luna, and haruhi, who is also bundled) and
    silk-road/ChatHaruhi-from-RoleLLM (Jack Sparrow; Doctor Who is missing there, as ChatHaruhi's notes say)."""
    luna = [f"Luna:「Scene {i}: you're just as sane as I am.」\nHarry:「Luna, what are you doing here?」\n"
            f"Luna:「Looking for Nargles, number {i}.」" for i in range(16)]
    haruhi = [f"春日:「我对普通的人类没有兴趣！第{i}次。」\n阿虚:「……」" for i in range(4)]
    sparrow = [f"Jack Sparrow:「Why is the rum always gone? ({i})」\nWill Turner:「Jack!」\n"
               f"narrator:The ship rocks.\nJack Sparrow:「Savvy?」" for i in range(16)]
    return {
        "silk-road/ChatHaruhi-RolePlaying": {
            "Luna.jsonl": character_file("I want you to act like Luna from Harry Potter.\n"
                                         "Classic scenes for the role are as follows:\n{{RAG多对话|token<=1000|n<=5}}",
                                         luna, ("luotuo_openai", "bge_zh_s15"), encode_from=12),
            "haruhi.jsonl": character_file("你正在扮演凉宫春日。", haruhi, ("luotuo_openai",)),
            "README.md": b"---\nlicense: apache-2.0\n---\n# ChatHaruhi\n",
        },
        "silk-road/ChatHaruhi-from-RoleLLM": {
            "Jack Sparrow.jsonl": character_file("I want you to act like Jack Sparrow from "
                                                 "Pirates-of-the-Caribbean-Dead-Man's-Chest.", sparrow,
                                                 ("luotuo_openai", "bge_en_s15")),
            "README.md": b"---\nlicense: cc-by-4.0\n---\n",
        },
    }


class FakeHub:
    """Files served in the hub's URL layout with the headers huggingface_hub reads (X-Repo-Commit, ETag...)."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {
            "haruhi/tiny-GGUF": {"tiny-Q4_K_M.gguf": _blob(1, 300_000), "tiny-Q8_0.gguf": _blob(2, 200_000),
                                 "README.md": b"# tiny\n"},
            "haruhi/checkpoint": {"config.json": b'{"model_type": "gpt_oss"}', "model.safetensors": _blob(3, 50_000)},
            "haruhi/many-GGUF": {"a-Q8_0.gguf": _blob(4, 1000), "a-F16.gguf": _blob(5, 2000)},
        }
        self.datasets: dict[str, dict[str, bytes]] = chatharuhi_datasets()
        self.lfs: set[str] = {"Jack Sparrow.jsonl"}  # big files live in LFS (Harry.jsonl does on the real hub)
        self.drop_once: set[str] = set()  # first GET of these files dies half way
        self.lie_about: set[str] = set()  # ETag of these files does not match their bytes
        self.requests: list[tuple[str, str, str | None]] = []

    def is_lfs(self, name: str) -> bool:
        return name.endswith((".gguf", ".safetensors")) or name in self.lfs

    def files(self, kind: str | None, repo: str) -> dict[str, bytes] | None:
        """A repo's files; ``kind`` is the URL's ``datasets``/``models`` part (None: a model)."""
        return (self.datasets if kind == "datasets" else self.repos).get(repo)

    def etag(self, repo: str, name: str, kind: str | None = None) -> str:
        data = self.files(kind, repo)[name]
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
                match = re.fullmatch(r"/(?:(datasets)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path.split("?")[0])
                hub.requests.append((self.command, self.path, self.headers.get("Range")))
                files = hub.files(match[1], match[2]) if match else None
                if files is None:
                    return self._error("RepoNotFound")
                repo, name = match[2], unquote(match[4])
                if name not in files:
                    return self._error("EntryNotFound")
                data = files[name]
                etag = hub.etag(repo, name, match[1])
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
                match = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/revision/([^/?]+)(\?.*)?", self.path)
                if not match:
                    return self._resolve(head=False)
                hub.requests.append(("GET", self.path, None))
                files = hub.files(match[1], match[2])
                if files is None:
                    return self._error("RepoNotFound")
                body = json.dumps({"id": match[2], "sha": COMMIT, "siblings": [
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
