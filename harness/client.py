"""A small client for ComfyUI's HTTP + websocket API: queue an API-format prompt, follow its progress,
read its history and fetch its files. Used by the demo, the integration tests and the benchmarks."""
from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field

import aiohttp


class PromptRejected(RuntimeError):
    """POST /prompt answered 400: validation failed. ``body`` holds ``error`` and ``node_errors``."""

    def __init__(self, body: dict):
        self.body = body
        super().__init__(json.dumps(body, indent=1)[:4000])


@dataclass
class RunResult:
    prompt_id: str
    status: str                      # "success" or "error"
    outputs: dict                    # history outputs: {node_id: ui dict}
    events: list = field(default_factory=list)   # websocket messages (type, data) for this prompt
    history: dict = field(default_factory=dict)
    previews: list = field(default_factory=list)  # binary websocket frames (sampling previews), raw bytes

    def preview_images(self) -> list[bytes]:
        """The JPEG/PNG images of the binary preview frames (after ComfyUI's 8-byte event/format header)."""
        return [p[8:] for p in self.previews if len(p) > 8 and int.from_bytes(p[:4], "big") == 1]

    @property
    def error(self) -> dict | None:
        """The ``execution_error`` payload (node_id, node_type, exception_message, ...) if it failed."""
        for kind, data in self.events:
            if kind == "execution_error":
                return data
        for kind, data in self.history.get("status", {}).get("messages", []):
            if kind == "execution_error":
                return data
        return None

    def progress(self, node_id: str | None = None) -> list[dict]:
        return [d for k, d in self.events if k == "progress" and (node_id is None or d.get("node") == node_id)]


class ComfyClient:
    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def get_json(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return json.loads(r.read())

    def view(self, filename: str, subfolder: str = "", kind: str = "output") -> bytes:
        q = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": kind})
        with urllib.request.urlopen(f"{self.url}/view?{q}", timeout=60) as r:
            return r.read()

    def upload(self, name: str, data: bytes, overwrite: bool = True) -> dict:
        """POST /upload/image (the route ComfyUI uses for every input file type)."""
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n",
            f'--{boundary}\r\nContent-Disposition: form-data; name="overwrite"\r\n\r\n{str(overwrite).lower()}\r\n'.encode(),
            f"--{boundary}--\r\n".encode(),
        ]
        req = urllib.request.Request(self.url + "/upload/image", data=b"".join(parts), method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def queue(self, prompt: dict, client_id: str | None = None) -> str:
        body = json.dumps({"prompt": prompt, "client_id": client_id or uuid.uuid4().hex}).encode()
        req = urllib.request.Request(self.url + "/prompt", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read())["prompt_id"]
        except urllib.error.HTTPError as e:
            if e.code == 400:
                raise PromptRejected(json.loads(e.read())) from None
            raise

    async def _run(self, prompt: dict, timeout: float) -> RunResult:
        client_id = uuid.uuid4().hex
        events: list = []
        previews: list = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{self.url}/ws?clientId={client_id}") as ws:
                prompt_id = await asyncio.to_thread(self.queue, prompt, client_id)

                async def follow():
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.BINARY:
                            previews.append(msg.data)   # sampling previews (only this client's prompts)
                            continue
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            continue
                        m = json.loads(msg.data)
                        data = m.get("data", {})
                        if data.get("prompt_id") not in (None, prompt_id):
                            continue
                        events.append((m["type"], data))
                        if m["type"] in ("execution_error", "execution_interrupted"):
                            return
                        if m["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                            return

                await asyncio.wait_for(follow(), timeout)
        history = (await asyncio.to_thread(self.get_json, f"/history/{prompt_id}")).get(prompt_id, {})
        status = history.get("status", {}).get("status_str", "error")
        return RunResult(prompt_id, status, history.get("outputs", {}), events, history, previews)

    def run(self, prompt: dict, timeout: float = 600.0) -> RunResult:
        """Queue ``prompt`` and block until it finishes; raises PromptRejected on a 400."""
        return asyncio.run(self._run(prompt, timeout))
