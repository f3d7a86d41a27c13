"""Build the synthetic studio-speaker data set (IASA-mini) in two stages.

    # stage 1, on a machine with espeak-ng + librosa (small output, carried to the GPU machine):
    python iasa_cli.py training.synth.build motion --out .dev/synth --train 400 --heldout 40 --seed 0
    # stage 2, anywhere with numpy + cv2 + safetensors (e.g. the 16-core GPU machine):
    python iasa_cli.py training.synth.build render --motion .dev/synth/motion --out .dev/synth/shards
    # look at a clip:
    python iasa_cli.py training.synth.build preview --shard .dev/synth/shards/heldout-00000.safetensors --out x.png

``motion`` writes the speech corpus to ``<out>/speech/<split>/`` (FLAC, not needed later) and the
motion bundle to ``<out>/motion/<split>.npz|json`` (keypoints, energy, encoded audio, identities).
Every stage prints a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from .speech import SPLITS

log = logging.getLogger(__name__)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _seconds(args, split: str) -> tuple[float, float]:
    return tuple(getattr(args, f"{split}_seconds"))


def cmd_speech(args) -> dict:
    from .speech import make_corpus

    out = {}
    for split, n in (("train", args.train), ("heldout", args.heldout)):
        if n > 0:
            clips = make_corpus(Path(args.out) / split, n, args.seed, split, _seconds(args, split))
            out[split] = dict(clips=len(clips), seconds=round(sum(c.duration for c in clips), 1))
    return out


def cmd_motion(args) -> dict:
    from .motion import build_motion
    from .speech import MANIFEST, make_corpus

    root = Path(args.out)
    summary = {}
    for split, n in (("train", args.train), ("heldout", args.heldout)):
        if n <= 0:
            continue
        speech_dir = root / "speech" / split
        if args.remake_speech or not (speech_dir / MANIFEST).exists():
            make_corpus(speech_dir, n, args.seed, split, _seconds(args, split))
        summary[split] = build_motion(speech_dir, root / "motion", split, seed=args.seed, size=args.size, fps=args.fps,
                                      audio_codec=args.audio_codec, n_identities=args.identities)
        log.info("%s", summary[split])
    summary["motion_bytes_total"] = _dir_bytes(root / "motion")
    return summary


def cmd_render(args) -> dict:
    from .render import render_bundle

    return render_bundle(args.motion, args.out, args.splits, clips_per_shard=args.clips_per_shard,
                         workers=args.workers, limit=args.limit)


def cmd_subset(args) -> dict:
    from .motion import subset_motion

    return {split: subset_motion(args.motion, args.out, split, n)
            for split, n in (("train", args.train), ("heldout", args.heldout))}


def cmd_preview(args) -> dict:
    import cv2

    from .shards import iter_shard

    for i, clip in enumerate(iter_shard(args.shard, keys=("frames", "masks"))):
        if i != args.clip:
            continue
        frames = clip["frames"]
        idx = np.linspace(0, len(frames) - 1, args.n).astype(int)
        row = np.concatenate([frames[t] for t in idx], axis=1)
        overlay = frames[idx].copy()
        colors = {"face": (255, 0, 0), "lips": (255, 255, 0), "left_hand": (0, 255, 0), "right_hand": (0, 0, 255),
                  "arms": (255, 0, 255), "torso": (0, 255, 255)}
        for name in ("torso", "arms", "face", "lips", "left_hand", "right_hand"):
            m = clip["masks"][name][idx]
            overlay[m] = (0.5 * overlay[m] + 0.5 * np.array(colors[name])).astype(np.uint8)
        sheet = np.concatenate([row, np.concatenate(list(overlay), axis=1)], axis=0)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(args.out), sheet[..., ::-1])
        return dict(out=str(args.out), id=clip["id"], text=clip["text"], frames=int(len(frames)))
    raise SystemExit(f"preview: shard {args.shard} has no clip {args.clip}")


def _add_seconds(p: argparse.ArgumentParser) -> None:
    from .speech import MAX_SECONDS, MIN_SECONDS

    for split in SPLITS:
        p.add_argument(f"--{split}-seconds", type=float, nargs=2, default=(MIN_SECONDS, MAX_SECONDS),
                       metavar=("MIN", "MAX"), help=f"length range of the {split} clips in seconds")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="training.synth.build", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    sp = sub.add_parser("speech", help="only the espeak-ng speech corpus")
    sp.add_argument("--out", required=True)
    sp.add_argument("--train", type=int, default=400)
    sp.add_argument("--heldout", type=int, default=40)
    sp.add_argument("--seed", type=int, default=0)
    _add_seconds(sp)

    mp_ = sub.add_parser("motion", help="speech corpus + keypoints motion bundle (needs espeak-ng, librosa)")
    mp_.add_argument("--out", required=True, help="root folder: speech/ and motion/ go inside")
    mp_.add_argument("--train", type=int, default=400)
    mp_.add_argument("--heldout", type=int, default=40)
    mp_.add_argument("--seed", type=int, default=0)
    _add_seconds(mp_)
    mp_.add_argument("--size", type=int, default=256, help="square frame size in pixels")
    mp_.add_argument("--fps", type=float, default=25.0)
    mp_.add_argument("--audio-codec", default="mulaw", choices=("mulaw", "pcm16", "none"),
                     help="audio stored in the bundle: mulaw (8-bit, small), pcm16 (lossless), none")
    mp_.add_argument("--identities", type=int, default=None, help="distinct identities per split (default: one per clip)")
    mp_.add_argument("--remake-speech", action="store_true", help="re-synthesise the speech corpus even if present")

    rp = sub.add_parser("render", help="draw frames + masks from a motion bundle into shards (numpy + cv2)")
    rp.add_argument("--motion", required=True, help="motion bundle folder (<out>/motion of the motion stage)")
    rp.add_argument("--out", required=True, help="shard folder")
    rp.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    rp.add_argument("--clips-per-shard", type=int, default=16)
    rp.add_argument("--workers", type=int, default=None, help="processes (default: all CPU cores)")
    rp.add_argument("--limit", type=int, default=None, help="render only the first N clips of each split")

    up = sub.add_parser("subset", help="the first N clips of each split of a motion bundle, as a new bundle "
                                       "(a smaller one to carry)")
    up.add_argument("--motion", required=True, help="source motion bundle folder")
    up.add_argument("--out", required=True, help="folder of the new bundle")
    up.add_argument("--train", type=int, required=True)
    up.add_argument("--heldout", type=int, required=True)

    pp = sub.add_parser("preview", help="PNG contact sheet of one clip of a shard (frames + region masks)")
    pp.add_argument("--shard", required=True)
    pp.add_argument("--clip", type=int, default=0)
    pp.add_argument("--n", type=int, default=6, help="frames in the sheet")
    pp.add_argument("--out", required=True)

    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    result = {"speech": cmd_speech, "motion": cmd_motion, "render": cmd_render, "subset": cmd_subset,
              "preview": cmd_preview}[args.cmd](args)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
