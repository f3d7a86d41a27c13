"""Make the bundled driving video of the "speech + driving video" example (assets/demo/driving.mp4).

    python iasa_cli.py harness.driving_video [--out assets/demo/driving.mp4]

The astronaut photo (assets/demo/reference.jpg) swayed and turned about the bottom centre, as a person
rocking side to side: 2 s at 25 fps, 512 x 512, H.264. Deterministic: rerunning writes the same frames.
Its body motion is what IASA Audio To Pose retargets onto the reference in the example.
"""
from __future__ import annotations

import argparse
import math
import pathlib

import av
import numpy as np
from PIL import Image

from .server import REPO

FPS, SECONDS = 25, 2.0


def sway_frames(photo: Image.Image, n: int = int(FPS * SECONDS)) -> list[np.ndarray]:
    w, h = photo.size
    frames = []
    for i in range(n):
        phase = 2 * math.pi * i / n
        angle = 6.0 * math.sin(phase)                 # degrees, about the bottom centre
        shift = 18.0 * math.sin(phase + math.pi / 4)  # pixels
        f = photo.rotate(angle, resample=Image.BICUBIC, center=(w / 2, h), translate=(shift, 0), fillcolor=(0, 0, 0))
        frames.append(np.asarray(f.convert("RGB")))
    return frames


def write_mp4(frames: list[np.ndarray], path: pathlib.Path) -> pathlib.Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=FPS, options={"crf": "23", "preset": "medium"})
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for f in frames:
            for packet in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=pathlib.Path, default=REPO / "assets" / "demo" / "driving.mp4")
    args = ap.parse_args()
    with Image.open(REPO / "assets" / "demo" / "reference.jpg") as photo:
        print("wrote", write_mp4(sway_frames(photo.convert("RGB")), args.out))


if __name__ == "__main__":
    main()
