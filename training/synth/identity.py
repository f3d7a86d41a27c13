"""Synthetic speaker identities: every look parameter of a cartoon presenter, sampled from one seed.

An :class:`Identity` is a frozen, hashable, JSON-serialisable record (colours are RGB 0..255 tuples).
The same seed always gives the same identity (numpy ``default_rng(seed)``, fixed draw order), so
data sets are reproducible and train / held-out splits can be made from disjoint seed ranges.
"""
from __future__ import annotations

import colorsys
from dataclasses import asdict, dataclass, fields

import numpy as np

RGB = tuple[int, int, int]

HAIR_STYLES = ("short", "fringe", "side_part", "bob", "long", "bun", "buzz", "curly", "bald")
SHIRT_PATTERNS = ("solid", "stripes", "jacket", "two_tone")
NECKLINES = ("round", "v", "collar")
SLEEVES = ("long", "short")
BACKGROUNDS = ("gradient", "spot", "panels", "screen")

# Skin tones from light to deep (RGB), jittered per identity.
SKIN_TONES: tuple[RGB, ...] = (
    (255, 224, 196), (241, 194, 160), (224, 172, 131), (198, 144, 104), (168, 113, 76),
    (141, 92, 60), (111, 70, 45), (84, 53, 36),
)
HAIR_COLORS: tuple[RGB, ...] = (
    (28, 24, 24), (52, 36, 28), (84, 56, 36), (120, 78, 44), (165, 110, 58), (214, 180, 110),
    (150, 60, 32), (170, 170, 170), (235, 235, 230),
)
UNUSUAL_HAIR: tuple[RGB, ...] = ((40, 80, 170), (170, 50, 120), (60, 140, 120))
EYE_COLORS: tuple[RGB, ...] = ((70, 45, 30), (100, 70, 40), (60, 100, 150), (80, 120, 80), (40, 30, 25))


@dataclass(frozen=True)
class Identity:
    """The look of one synthetic presenter (all colours RGB)."""

    seed: int
    skin: RGB
    hair_color: RGB
    hair_style: str
    eye_color: RGB
    lip_color: RGB
    shirt_color: RGB
    shirt_color2: RGB
    shirt_pattern: str
    neckline: str
    sleeves: str
    bg_top: RGB
    bg_bottom: RGB
    bg_accent: RGB
    bg_style: str
    head_scale: float       # face size relative to the nominal (0.94 .. 1.06)
    shoulder_scale: float   # shoulder width relative to the nominal (0.88 .. 1.12)
    limb_scale: float       # arm / finger thickness relative to the nominal (0.85 .. 1.2)
    offset_x: float         # horizontal placement, fraction of the frame width (-0.05 .. 0.05)
    elbow_out: float        # rest pose: how far the elbows stand out (0 .. 1)
    hand_height: float      # rest pose: how high the resting hands sit (0 .. 1)

    @classmethod
    def sample(cls, seed: int) -> "Identity":
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"Identity.sample: seed must be a non-negative integer, got {seed!r}")
        rng = np.random.default_rng([int(seed), 0x1D])
        skin = _jitter(rng, SKIN_TONES[rng.integers(len(SKIN_TONES))], 10)
        if rng.random() < 0.08:
            hair = _jitter(rng, UNUSUAL_HAIR[rng.integers(len(UNUSUAL_HAIR))], 15)
        else:
            hair = _jitter(rng, HAIR_COLORS[rng.integers(len(HAIR_COLORS))], 12)
        hair_style = HAIR_STYLES[rng.integers(len(HAIR_STYLES))]
        eye = _jitter(rng, EYE_COLORS[rng.integers(len(EYE_COLORS))], 10)
        lip = _lip_color(rng, skin)
        shirt = _hsv(rng, rng.random(), rng.uniform(0.25, 0.85), rng.uniform(0.3, 0.9))
        shirt2 = _hsv(rng, rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.15, 0.95))
        pattern = SHIRT_PATTERNS[rng.integers(len(SHIRT_PATTERNS))]
        neckline = NECKLINES[rng.integers(len(NECKLINES))]
        sleeves = SLEEVES[int(rng.random() < 0.3)]
        bg_top, bg_bottom = _background_pair(rng, shirt)
        accent = _hsv(rng, rng.random(), rng.uniform(0.2, 0.6), rng.uniform(0.5, 0.9))
        bg_style = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
        return cls(
            seed=int(seed), skin=skin, hair_color=hair, hair_style=hair_style, eye_color=eye,
            lip_color=lip, shirt_color=shirt, shirt_color2=shirt2, shirt_pattern=pattern,
            neckline=neckline, sleeves=sleeves, bg_top=bg_top, bg_bottom=bg_bottom, bg_accent=accent,
            bg_style=bg_style,
            head_scale=round(float(rng.uniform(0.94, 1.06)), 4),
            shoulder_scale=round(float(rng.uniform(0.88, 1.12)), 4),
            limb_scale=round(float(rng.uniform(0.85, 1.2)), 4),
            offset_x=round(float(rng.uniform(-0.05, 0.05)), 4),
            elbow_out=round(float(rng.random()), 4),
            hand_height=round(float(rng.random()), 4),
        )

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "Identity":
        names = {f.name for f in fields(cls)}
        missing = names - set(data)
        if missing:
            raise ValueError(f"Identity.from_dict: missing fields {sorted(missing)}; pass Identity.to_dict() output")
        kw = {k: tuple(int(c) for c in data[k]) if isinstance(data[k], (list, tuple)) else data[k] for k in names}
        return cls(**kw)


def _clip_rgb(c) -> RGB:
    return tuple(int(np.clip(round(float(v)), 0, 255)) for v in c)  # type: ignore[return-value]


def _jitter(rng: np.random.Generator, c: RGB, amount: float) -> RGB:
    return _clip_rgb(np.asarray(c, float) + rng.uniform(-amount, amount, 3))


def _hsv(rng: np.random.Generator, h: float, s: float, v: float) -> RGB:
    return _clip_rgb(np.array(colorsys.hsv_to_rgb(h % 1.0, s, v)) * 255)


def _lip_color(rng: np.random.Generator, skin: RGB) -> RGB:
    """Lips: the skin tone pulled towards red and darkened, sometimes a stronger lipstick."""
    base = np.asarray(skin, float)
    red = np.array([200.0, 70.0, 80.0]) if rng.random() < 0.25 else np.array([170.0, 80.0, 80.0])
    mix = rng.uniform(0.35, 0.6)
    return _clip_rgb((base * (1 - mix) + red * mix) * rng.uniform(0.75, 0.9))


def _background_pair(rng: np.random.Generator, shirt: RGB) -> tuple[RGB, RGB]:
    """Studio backdrop colours (muted), resampled until they stand apart from the shirt."""
    top = bottom = shirt
    for _ in range(20):
        h = rng.random()
        top = _hsv(rng, h, rng.uniform(0.05, 0.45), rng.uniform(0.35, 0.95))
        bottom = _hsv(rng, h + rng.uniform(-0.08, 0.08), rng.uniform(0.05, 0.5), rng.uniform(0.2, 0.8))
        mid = (np.asarray(top, float) + np.asarray(bottom, float)) / 2
        if np.linalg.norm(mid - np.asarray(shirt, float)) > 90:
            break
    return top, bottom
