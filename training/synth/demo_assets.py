"""The bundled inputs of the IASA-mini talking demo: a held-out synthetic speaker and its exact pose.

    python iasa_cli.py training.synth.demo_assets [--seed 1000001] [--out assets/demo]

Writes ``synth_speaker.png`` (256 x 256 RGB, the identity in its rest pose, drawn by the same code as the
training data) and ``synth_speaker_pose.json`` (POSE_KEYPOINT of exactly that pose, pixels of the
256 x 256 canvas). The seed is in the held-out range (``motion.SPLIT_IDENTITY_BASE``), so the bundled
teacher never saw this speaker in training. Output is deterministic: rerunning rewrites identical files.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ...pose.keypoints import to_pose_keypoint
from ...pose.pose_files import write_pose_file
from .character import draw_frame
from .identity import Identity
from .motion import SIZE, SPLIT_IDENTITY_BASE
from .templates import base_pose

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SEED = SPLIT_IDENTITY_BASE["heldout"] + 1
IMAGE_NAME = "synth_speaker.png"
POSE_NAME = "synth_speaker_pose.json"


def make_demo_speaker(seed: int = DEFAULT_SEED, size: int = SIZE) -> tuple[np.ndarray, list[dict]]:
    """(RGB uint8 ``[size, size, 3]``, POSE_KEYPOINT of one frame) of identity ``seed`` at rest."""
    if seed < SPLIT_IDENTITY_BASE["heldout"]:
        raise ValueError(f"demo_assets: seed {seed} is a training identity; use a held-out seed "
                         f">= {SPLIT_IDENTITY_BASE['heldout']} so the demo shows an unseen speaker")
    identity = Identity.sample(seed)
    pose = base_pose(identity, size)
    return draw_frame(pose.points[0], identity, size), to_pose_keypoint(pose)


def write_demo_assets(out_dir: str | Path, seed: int = DEFAULT_SEED, size: int = SIZE) -> list[Path]:
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image, pose = make_demo_speaker(seed, size)
    Image.fromarray(image, "RGB").save(out / IMAGE_NAME, optimize=True)
    return [out / IMAGE_NAME, write_pose_file(out / POSE_NAME, pose)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="held-out identity seed")
    ap.add_argument("--size", type=int, default=SIZE, help="square canvas in pixels (the teacher's 256)")
    ap.add_argument("--out", type=Path, default=REPO / "assets" / "demo")
    a = ap.parse_args(argv)
    for p in write_demo_assets(a.out, a.seed, a.size):
        print("wrote", p)


if __name__ == "__main__":
    main()
