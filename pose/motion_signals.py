"""Control signals for audio-to-pose, one value per video frame, computed from AudioFeatures.

Everything here is a plain 1-D time series: mouth opening and spread, blink closure, head angles,
beat times and per-arm gesture angles. Geometry (which way a joint turns) lives in motion_face /
motion_body. Time constants are in seconds so results look the same at any fps.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SILENCE_THRESHOLD = 0.05     # energy below this is treated as silence (lips closed)
MOUTH_ATTACK_S = 0.02        # opening follows a rising energy within about a frame
MOUTH_RELEASE_S = 0.05       # and closes a little more slowly
MOUTH_GAMMA = 0.8            # < 1 lifts quiet syllables a little


def alpha(tau_s: float, fps: float) -> float:
    """One-pole smoothing coefficient for a time constant in seconds."""
    return float(1.0 - np.exp(-1.0 / max(tau_s * fps, 1e-6)))


def attack_release(x: np.ndarray, fps: float, attack_s: float, release_s: float) -> np.ndarray:
    """One-pole follower starting at 0: fast coefficient while rising, slow while falling."""
    a_up, a_down = alpha(attack_s, fps), alpha(release_s, fps)
    y = np.empty(len(x))
    prev = 0.0
    for t, v in enumerate(x):
        prev += (a_up if v > prev else a_down) * (v - prev)
        y[t] = prev
    return y


def smooth(x: np.ndarray, fps: float, tau_s: float) -> np.ndarray:
    """Zero-phase (forward then backward) one-pole smoothing."""
    a = alpha(tau_s, fps)
    y = np.asarray(x, dtype=np.float64).copy()
    for order in (range(1, len(y)), range(len(y) - 2, -1, -1)):
        step = order.step
        for t in order:
            y[t] = y[t - step] + a * (y[t] - y[t - step])
    return y


def soft_clip(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """Smoothly bounded to (low, high): identity near 0, tanh towards either bound."""
    x = np.asarray(x, dtype=np.float64)
    pos = high * np.tanh(np.maximum(x, 0.0) / high) if high > 0 else np.zeros_like(x)
    neg = low * np.tanh(np.minimum(x, 0.0) / low) if low < 0 else np.zeros_like(x)
    return np.where(x >= 0, pos, neg)


def slow_noise(rng: np.random.Generator, n: int, fps: float, f_lo: float = 0.08, f_hi: float = 0.45,
               n_sines: int = 3) -> np.ndarray:
    """Smooth seeded noise with unit RMS: a sum of a few slow sinusoids with random frequency/phase."""
    t = np.arange(n) / fps
    amp = rng.uniform(0.5, 1.0, n_sines)
    freq = rng.uniform(f_lo, f_hi, n_sines)
    phase = rng.uniform(0.0, 2 * np.pi, n_sines)
    x = (amp[:, None] * np.sin(2 * np.pi * freq[:, None] * t[None] + phase[:, None])).sum(axis=0)
    return x / np.sqrt(np.sum(amp ** 2) / 2.0)


# --------------------------------------------------------------------------------------------------
# mouth
# --------------------------------------------------------------------------------------------------
def mouth_opening(energy: np.ndarray, fps: float) -> np.ndarray:
    """Mouth opening 0..1 per frame: gated energy, attack faster than release, exactly 0 in silence."""
    e = np.asarray(energy, dtype=np.float64)
    gated = np.clip((e - SILENCE_THRESHOLD) / (1.0 - SILENCE_THRESHOLD), 0.0, 1.0) ** MOUTH_GAMMA
    env = attack_release(gated, fps, MOUTH_ATTACK_S, MOUTH_RELEASE_S)
    # Subtracting a small floor makes the release reach exactly 0 a few frames into a silence.
    return np.clip((env - 0.02) / 0.98, 0.0, 1.0)


def mouth_spread(mel_db: np.ndarray | None, opening: np.ndarray, fps: float) -> np.ndarray:
    """Lip spread -1..1 per frame (+ spread as in "ee"/"s", - rounded as in "oo") from the spectral
    centroid of the mel bands, standardised over the speech frames; 0 where the mouth is closed."""
    n = len(opening)
    if mel_db is None or np.ndim(mel_db) != 2 or np.shape(mel_db)[0] != n or np.shape(mel_db)[1] < 2:
        return np.zeros(n)
    power = 10.0 ** (np.asarray(mel_db, dtype=np.float64) / 10.0)
    bands = np.arange(power.shape[1]) / (power.shape[1] - 1)
    centroid = (power * bands).sum(axis=1) / np.maximum(power.sum(axis=1), 1e-20)
    speech = opening > 0.05
    if speech.sum() < 3:
        return np.zeros(n)
    mu, sd = centroid[speech].mean(), centroid[speech].std() + 1e-6
    z = np.where(speech, (centroid - mu) / sd, 0.0)
    return np.tanh(0.8 * smooth(z, fps, 0.04)) * np.clip(opening / 0.3, 0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# blinks
# --------------------------------------------------------------------------------------------------
def blink_closure(rng: np.random.Generator, n: int, fps: float, interval_s=(2.0, 6.0),
                  first_s=(0.3, 2.5), duration_s=(0.16, 0.24)) -> np.ndarray:
    """Eyelid closure 0..1 per frame: blinks at seeded random intervals, each a few frames long,
    closing, fully shut (1.0) for at least one frame, then reopening."""
    c = np.zeros(n)
    t = rng.uniform(*first_s)
    while True:
        start = int(round(t * fps))
        d = max(3, int(round(rng.uniform(*duration_s) * fps)))
        if start >= n:
            break
        n_close = max(1, int(round(0.3 * d)))
        n_hold = max(1, int(round(0.25 * d)))
        n_open = max(1, d - n_close - n_hold)
        shape = np.concatenate([
            np.arange(1, n_close + 1) / (n_close + 1),
            np.ones(n_hold),
            np.arange(n_open, 0, -1) / (n_open + 1),
        ])
        end = min(n, start + len(shape))
        c[start:end] = np.maximum(c[start:end], shape[: end - start])
        t += len(shape) / fps + rng.uniform(*interval_s)
    return c


# --------------------------------------------------------------------------------------------------
# beats (stressed syllables)
# --------------------------------------------------------------------------------------------------
def detect_beats(energy: np.ndarray, onset: np.ndarray, fps: float, onset_min: float = 0.25,
                 energy_min: float = 0.4, min_gap_s: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    """Stressed-syllable times: onset peaks followed (within ~0.15 s) by high energy.

    Returns (frames int [B], strength 0..1 [B]) sorted by time; peaks closer than ``min_gap_s`` keep
    only the strongest."""
    e = np.asarray(energy, dtype=np.float64)
    o = np.asarray(onset, dtype=np.float64)
    n = len(o)
    if n < 3:
        return np.zeros(0, int), np.zeros(0)
    look = max(1, int(round(0.15 * fps)))
    ahead = np.array([e[t : t + look + 1].max() for t in range(n)])
    prev = np.concatenate([[-1.0], o[:-1]])
    nxt = np.concatenate([o[1:], [-1.0]])
    cand = np.flatnonzero((o >= prev) & (o > nxt) & (o >= onset_min) & (ahead >= energy_min))
    score = o[cand] * ahead[cand]
    gap = min_gap_s * fps
    keep: list[int] = []
    for i in np.argsort(-score, kind="stable"):
        if all(abs(cand[i] - cand[j]) >= gap for j in keep):
            keep.append(i)
    keep.sort(key=lambda i: cand[i])
    idx = np.array(keep, dtype=int)
    if idx.size == 0:
        return np.zeros(0, int), np.zeros(0)
    return cand[idx], np.clip(score[idx] / max(score.max(), 1e-6), 0.0, 1.0)


def beat_kernel(n: int, fps: float, frame: int, attack_s: float = 0.2, decay_s: float = 0.55) -> np.ndarray:
    """Smooth bump 0..1 peaking at ``frame``: cosine rise over ``attack_s`` before, fall over ``decay_s``."""
    tau = (np.arange(n) - frame) / fps
    rise = 0.5 - 0.5 * np.cos(np.pi * np.clip((tau + attack_s) / attack_s, 0.0, 1.0))
    fall = 0.5 + 0.5 * np.cos(np.pi * np.clip(tau / decay_s, 0.0, 1.0))
    return np.where(tau < 0, rise, fall)


# --------------------------------------------------------------------------------------------------
# head
# --------------------------------------------------------------------------------------------------
@dataclass
class HeadAngles:
    """Head rotation per frame, radians: pitch > 0 nods down, yaw turns, roll tilts (about the neck)."""

    pitch: np.ndarray
    yaw: np.ndarray
    roll: np.ndarray

    def scaled(self, s: np.ndarray) -> "HeadAngles":
        return HeadAngles(self.pitch * s, self.yaw * s, self.roll * s)


PITCH_LIMITS_DEG = (-5.0, 10.0)
YAW_LIMIT_DEG = 6.0
ROLL_LIMIT_DEG = 6.0


def head_angles(energy: np.ndarray, pitch_hz: np.ndarray, beats: np.ndarray, strength: np.ndarray,
                fps: float, rng: np.random.Generator, amount: float) -> HeadAngles:
    """Nods on stressed syllables and with the speech envelope, tilt with the pitch contour, slow
    seeded drift on all three angles; soft-bounded to small angles (``amount`` scales before bounding)."""
    n = len(energy)
    accents = np.zeros(n)
    for b, s in zip(beats, strength):
        accents += s * beat_kernel(n, fps, int(b), attack_s=0.15, decay_s=0.45)
    envelope = smooth(np.asarray(energy, dtype=np.float64), fps, 0.35)
    f0 = np.asarray(pitch_hz, dtype=np.float64)
    voiced = f0 > 0
    tone = np.zeros(n)
    if voiced.sum() >= 3:
        logf = np.log(np.where(voiced, f0, 1.0))
        z = (logf - logf[voiced].mean()) / (logf[voiced].std() + 1e-6)
        idx = np.maximum.accumulate(np.where(voiced, np.arange(n), 0))  # hold through unvoiced gaps
        z_held = np.where(np.arange(n) < np.argmax(voiced), 0.0, z[idx])
        tone = smooth(z_held, fps, 0.3) * smooth(voiced.astype(float), fps, 0.3)
    nod = 4.5 * accents + 2.0 * envelope + 1.5 * slow_noise(rng, n, fps)
    yaw = 2.5 * slow_noise(rng, n, fps, 0.05, 0.3)
    roll = 1.5 * tone + 1.5 * slow_noise(rng, n, fps, 0.05, 0.3)
    deg = np.pi / 180.0
    return HeadAngles(
        pitch=soft_clip(amount * nod, *PITCH_LIMITS_DEG) * deg,
        yaw=soft_clip(amount * yaw, -YAW_LIMIT_DEG, YAW_LIMIT_DEG) * deg,
        roll=soft_clip(amount * roll, -ROLL_LIMIT_DEG, ROLL_LIMIT_DEG) * deg,
    )


# --------------------------------------------------------------------------------------------------
# arm gestures
# --------------------------------------------------------------------------------------------------
@dataclass
class ArmAngles:
    """Anatomical joint angle changes per frame, radians, positive = shoulder raised, upper arm
    abducted (elbow away from the body), elbow flexed (hand up/in), fingers curled. Signs on screen
    are chosen per arm by motion_body from the reference geometry."""

    shoulder: np.ndarray
    upper: np.ndarray
    fore: np.ndarray
    curl: np.ndarray

    def scaled(self, s: np.ndarray) -> "ArmAngles":
        return ArmAngles(self.shoulder * s, self.upper * s, self.fore * s, self.curl * s)


SHOULDER_LIMITS_DEG = (-2.0, 3.0)
UPPER_LIMITS_DEG = (-6.0, 28.0)
FORE_LIMITS_DEG = (-6.0, 70.0)
CURL_LIMITS_DEG = (-4.0, 14.0)


def gesture_angles(beats: np.ndarray, strength: np.ndarray, n: int, fps: float,
                   rng: np.random.Generator, amount: float) -> dict[str, ArmAngles]:
    """Beat gestures: each stressed syllable (with a seeded chance) swings the right, left or both
    forearms up with a smooth attack and decay; plus a slow idle sway. Bounded per joint."""
    raw = {side: np.zeros((4, n)) for side in ("right", "left")}
    for b, s in zip(beats, strength):
        if rng.uniform() > 0.8:
            continue                        # not every stressed syllable gets a gesture
        r = rng.uniform()
        sides = ("right",) if r < 0.45 else ("left",) if r < 0.75 else ("right", "left")
        k = beat_kernel(n, fps, int(b), attack_s=rng.uniform(0.15, 0.25), decay_s=rng.uniform(0.4, 0.7))
        gain = 0.5 + 0.5 * s
        params = np.array([rng.uniform(0.5, 2.5), rng.uniform(8.0, 20.0), rng.uniform(35.0, 65.0),
                           rng.uniform(4.0, 10.0)])
        for side in sides:
            raw[side] += gain * params[:, None] * k[None]
    deg = np.pi / 180.0
    limits = (SHOULDER_LIMITS_DEG, UPPER_LIMITS_DEG, FORE_LIMITS_DEG, CURL_LIMITS_DEG)
    idle_amp = (0.5, 2.0, 3.0, 3.0)
    out = {}
    for side in ("right", "left"):
        rows = []
        for j in range(4):
            idle = idle_amp[j] * slow_noise(rng, n, fps, 0.05, 0.35)
            rows.append(soft_clip(amount * (raw[side][j] + idle), *limits[j]) * deg)
        out[side] = ArmAngles(*rows)
    return out
