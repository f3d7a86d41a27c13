"""Stills for the README and the template browser, taken from a real output video.

    python iasa_cli.py harness.picture VIDEO.mp4 OUT.jpg [--frames 10 45 80] [--first IMAGE] [--height 256]

Writes one JPEG strip: the optional ``--first`` picture (the workflow's input), then the chosen frames of
the video (decoded with PyAV, which ComfyUI itself uses), all scaled to ``--height``.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
from PIL import Image


def read_frames(video: pathlib.Path, wanted: list[int]) -> list[np.ndarray]:
    import av

    out: dict[int, np.ndarray] = {}
    with av.open(str(video)) as box:
        for i, frame in enumerate(box.decode(video=0)):
            if i in wanted:
                out[i] = frame.to_ndarray(format="rgb24")
            if len(out) == len(set(wanted)):
                break
    missing = sorted(set(wanted) - set(out))
    if missing:
        raise ValueError(f"{video}: has no frame {missing[0]} (the video is shorter); pick smaller --frames")
    return [out[i] for i in wanted]


def strip(images: list[np.ndarray], height: int) -> Image.Image:
    tiles = [Image.fromarray(im).resize((round(im.shape[1] * height / im.shape[0]), height), Image.LANCZOS)
             for im in images]
    canvas = Image.new("RGB", (sum(t.width for t in tiles), height))
    x = 0
    for t in tiles:
        canvas.paste(t, (x, 0))
        x += t.width
    return canvas


def main(argv: list[str] | None = None) -> pathlib.Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("video", type=pathlib.Path)
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("--frames", type=int, nargs="+", default=[10, 45, 80, 115, 150])
    ap.add_argument("--first", type=pathlib.Path, default=None, help="an input picture to put first")
    ap.add_argument("--height", type=int, default=256)
    a = ap.parse_args(sys.argv[1:] if argv is None else argv)
    images = [np.asarray(Image.open(a.first).convert("RGB"))] if a.first else []
    images += read_frames(a.video, a.frames)
    strip(images, a.height).save(a.out, quality=88)
    print("wrote", a.out)
    return a.out


if __name__ == "__main__":
    main()
