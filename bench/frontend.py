"""Front-half benchmark on this machine: pose extraction speed, audio feature time, set-up time and
size, ComfyUI start time. Writes bench/results/frontend.json.

    python iasa_cli.py bench.frontend [--fresh-setup]   # --fresh-setup: time scripts/setup.sh in a new IASA_HOME

Numbers are wall-clock on whatever machine runs it (the README's are from the 2-core CPU machine).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import skimage.data
import soundfile as sf

from ..audio.features import compute_features
from ..harness.server import REPO, ComfyServer
from ..pose.extract import extract_pose
from . import run_info

RESULTS = REPO / "bench" / "results" / "frontend.json"


def shifted_video(n: int) -> np.ndarray:
    """n frames of the astronaut photo drifting a few pixels per frame (a stand-in for a talking video)."""
    img = skimage.data.astronaut()
    return np.stack([np.roll(img, (2 * (i % 5), 3 * (i % 7)), axis=(0, 1)) for i in range(n)])


def bench_pose(n: int = 48) -> dict:
    frames = shifted_video(n)
    extract_pose(frames[:2])  # graph start-up and first-frame cost out of the timing
    t0 = time.perf_counter()
    seq = extract_pose(frames, video_mode=True)
    dt = time.perf_counter() - t0
    assert seq.has_person().all()
    return {"pose_fps": n / dt, "pose_ms_per_frame": 1000 * dt / n, "pose_frames": n, "pose_size": "512x512"}


def bench_audio(seconds: float = 60.0, repeats: int = 3) -> dict:
    speech, sr = sf.read(REPO / "assets" / "demo" / "speech.wav", dtype="float32")
    signal = np.tile(speech, int(np.ceil(seconds * sr / len(speech))))[: int(seconds * sr)]
    compute_features(signal[: sr * 2], sr, 25.0)  # imports and filter banks out of the timing
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        compute_features(signal, sr, 25.0)
        times.append(time.perf_counter() - t0)
    return {"audio_features_s_per_60s": statistics.median(times) * 60.0 / seconds}


def bench_server(repeats: int = 3) -> dict:
    starts = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp, ComfyServer(pathlib.Path(tmp)) as srv:
            starts.append(srv.start_seconds)
    return {"server_start_s": statistics.median(starts), "server_start_runs_s": starts}


def dir_gb(path: pathlib.Path) -> float:
    total = 0
    for p in path.rglob("*"):
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total / 1e9


def bench_setup(fresh: bool) -> dict:
    venv = pathlib.Path(sys.prefix)
    out = {"venv_gb": dir_gb(venv)}
    if fresh:
        home = pathlib.Path(tempfile.mkdtemp(prefix="iasa_setup_"))
        env = dict(os.environ, IASA_HOME=str(home), PIP_NO_CACHE_DIR="1")  # no pip cache: as on a bare machine
        t0 = time.perf_counter()
        subprocess.run(["bash", str(REPO / "scripts" / "setup.sh")], check=True, env=env, stdout=subprocess.DEVNULL)
        out["setup_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run(["bash", str(REPO / "scripts" / "setup.sh")], check=True, env=env, stdout=subprocess.DEVNULL)
        out["setup_again_s"] = time.perf_counter() - t0
        out["venv_gb"] = dir_gb(home / "venv")
        shutil.rmtree(home, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fresh-setup", action="store_true", help="also time scripts/setup.sh into a new IASA_HOME")
    args = ap.parse_args()
    result = {}
    if RESULTS.exists() and not args.fresh_setup:
        old = json.loads(RESULTS.read_text())   # keep the last fresh set-up figures
        result.update({k: old[k] for k in ("setup_s", "setup_again_s") if k in old})
    result.update(bench_pose())
    result.update(bench_audio())
    result.update(bench_server())
    result.update(bench_setup(args.fresh_setup))
    result["command"] = "python iasa_cli.py bench.frontend" + (" --fresh-setup" if args.fresh_setup else "")
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}"
    result["versions"] = run_info.versions(("mediapipe", "librosa"))
    result["date"] = time.strftime("%Y-%m-%d")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
