"""Speech corpus for the synthetic speakers: random English sentences spoken by espeak-ng.

Runs on the data-preparation machine only (needs the ``espeak-ng`` program, ``soundfile`` and
``soxr``). :func:`make_corpus` writes 16 kHz mono FLAC clips of 2-6 s plus ``manifest.json``.

* Sentences come from a small built-in grammar. The train and held-out splits draw from disjoint
  sentence sets: a sentence belongs to the held-out set iff ``crc32(text) % HELDOUT_BUCKETS == 0``,
  so no sentence can ever appear in both, whatever the seeds.
* Voices: espeak-ng's English dialects combined with its male / female variants; speaking rate,
  pitch, word gap and loudness are drawn per clip. Every clip starts and ends with some silence.
* Deterministic: the same ``(seed, split, n_clips)`` gives the same texts, voices and samples
  (espeak-ng is deterministic; the resampler is too).
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
MIN_SECONDS, MAX_SECONDS = 2.0, 6.0
HELDOUT_BUCKETS = 8
SPLITS = ("train", "heldout")
MANIFEST = "manifest.json"

DIALECTS = ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
            "Andy", "Annie", "Alicia", "anika", "Denis", "steph")

# --------------------------------------------------------------------------------------------------
# sentence grammar
# --------------------------------------------------------------------------------------------------
WORDS = {
    "name": ("Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jonas", "Kate",
             "Leo", "Maya", "Nora", "Oscar", "Paula", "Rosa", "Sam", "Tara", "Victor"),
    "det": ("the", "a", "this", "that", "our", "every", "one", "my", "your"),
    "adj": ("small", "bright", "quiet", "old", "new", "green", "heavy", "simple", "strange", "warm", "cold",
            "clever", "long", "short", "happy", "busy", "empty", "golden", "silver", "gentle", "early", "late",
            "careful", "famous", "local", "modern", "narrow", "open", "quick", "rare"),
    "noun": ("garden", "river", "window", "teacher", "project", "report", "machine", "village", "market",
             "camera", "letter", "mountain", "museum", "doctor", "kitchen", "planet", "signal", "orchestra",
             "bicycle", "library", "harbour", "engine", "picture", "meeting", "forest", "station", "story",
             "bridge", "island", "festival", "recipe", "lesson", "concert", "painting", "journey", "question"),
    "verb_past": ("found", "opened", "painted", "visited", "described", "repaired", "carried", "noticed",
                  "explained", "followed", "measured", "changed", "watched", "remembered", "built", "answered"),
    "verb_base": ("open", "paint", "visit", "describe", "repair", "carry", "explain", "follow", "measure",
                  "change", "watch", "build", "answer", "finish", "share", "study"),
    "prep": ("near", "behind", "under", "beside", "across", "inside", "above", "around", "past", "before"),
    "time": ("today", "yesterday", "tomorrow", "this morning", "last week", "on Monday", "after lunch",
             "every evening", "in the spring", "at noon", "before dinner", "later tonight"),
    "adverb": ("slowly", "quickly", "carefully", "happily", "quietly", "suddenly", "finally", "really",
               "almost", "clearly"),
    "opener": ("Well", "So", "Honestly", "Of course", "In fact", "Luckily", "Meanwhile", "Still",
               "Believe it or not", "As you can see"),
}

TEMPLATES = (
    "{det} {adj} {noun} {verb_past} {det} {noun} {prep} {det} {noun}.",
    "{name} {verb_past} the {adj} {noun} {time}.",
    "{opener}, {name} {adverb} {verb_past} {det} {noun}.",
    "Did you {verb_base} the {adj} {noun} {prep} the {noun}?",
    "We will {verb_base} {det} {noun} {time}, and then we can {verb_base} the {noun}.",
    "{name} and {name} {verb_past} a {adj} {noun} {prep} the {adj} {noun}.",
    "Please {verb_base} the {noun} {adverb}.",
    "{opener}, the {noun} is {adj} and the {noun} is {adj}.",
    "I {adverb} {verb_past} {det} {adj} {noun} {time}.",
    "Why did {name} {verb_base} the {noun} {prep} the {adj} {noun}?",
    "{time}, {det} {adj} {noun} {verb_past} {det} {noun}.",
    "It was {adj}, but {name} {verb_past} the {noun} anyway.",
)


def sentence(rng: np.random.Generator, n_clauses: int = 1) -> str:
    """A random sentence of ``n_clauses`` template clauses."""
    parts = []
    for _ in range(max(1, n_clauses)):
        tpl = TEMPLATES[rng.integers(len(TEMPLATES))]
        out, i = [], 0
        while i < len(tpl):
            j = tpl.find("{", i)
            if j < 0:
                out.append(tpl[i:])
                break
            k = tpl.index("}", j)
            out.append(tpl[i:j])
            words = WORDS[tpl[j + 1:k]]
            out.append(words[rng.integers(len(words))])
            i = k + 1
        text = "".join(out)
        parts.append(text[0].upper() + text[1:])
    return " ".join(parts)


def sentence_split(text: str) -> str:
    """The split a sentence belongs to (fixed by its text)."""
    return "heldout" if zlib.crc32(text.encode("utf-8")) % HELDOUT_BUCKETS == 0 else "train"


# --------------------------------------------------------------------------------------------------
# synthesis
# --------------------------------------------------------------------------------------------------
@dataclass
class SpeechClip:
    id: str
    file: str
    text: str
    voice: str
    rate: int
    pitch: int
    word_gap: int
    gain: float
    lead_s: float
    duration: float
    split: str


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def synthesize(text: str, voice: str, rate: int, pitch: int, word_gap: int, workdir: Path) -> np.ndarray:
    """espeak-ng -> float32 mono at :data:`SAMPLE_RATE`."""
    import soundfile as sf
    import soxr

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed: install it (apt-get install espeak-ng) to make the speech corpus")
    wav = workdir / "tts.wav"
    cmd = [exe, "-v", voice, "-s", str(rate), "-p", str(pitch), "-g", str(word_gap), "-w", str(wav), "--", text]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if res.returncode != 0 or not wav.exists():
        raise RuntimeError(f"espeak-ng failed for voice {voice!r}: {res.stderr.strip()}")
    y, sr = sf.read(str(wav), dtype="float32", always_2d=True)
    y = y.mean(axis=1)
    if sr != SAMPLE_RATE:
        y = soxr.resample(y, sr, SAMPLE_RATE, quality="HQ").astype(np.float32)
    return _trim_silence(y)


def _trim_silence(y: np.ndarray, threshold: float = 1e-3) -> np.ndarray:
    loud = np.flatnonzero(np.abs(y) > threshold)
    if loud.size == 0:
        return y[:0]
    return y[loud[0]: loud[-1] + 1]


def _sentence_of_split(rng: np.random.Generator, n_clauses: int, split: str, max_draws: int = 10_000) -> str:
    """A random sentence that belongs to ``split`` (held-out sentences are 1 in HELDOUT_BUCKETS)."""
    for _ in range(max_draws):
        text = sentence(rng, n_clauses)
        if sentence_split(text) == split:
            return text
    raise RuntimeError(f"no {split!r} sentence in {max_draws} draws")


def _draw_clip(rng: np.random.Generator, split: str, workdir: Path, max_tries: int = 40,
               seconds: tuple[float, float] = (MIN_SECONDS, MAX_SECONDS)):
    """Draw voice settings and a sentence of the split until the padded clip lasts ``seconds`` (2-6 s)."""
    lo, hi = seconds
    for _ in range(max_tries):
        voice = f"{DIALECTS[rng.integers(len(DIALECTS))]}+{VARIANTS[rng.integers(len(VARIANTS))]}"
        rate = int(rng.integers(135, 196))
        pitch = int(rng.integers(25, 76))
        word_gap = int(rng.choice([0, 0, 0, 1, 2, 4]))
        lead, tail = rng.uniform(0.15, 0.5, 2)
        target = rng.uniform(lo, hi) - lead - tail
        words_wanted = target * rate / 60.0
        n_clauses = max(1, min(6, int(round(words_wanted / 7.5))))
        text = _sentence_of_split(rng, n_clauses, split)
        speech = synthesize(text, voice, rate, pitch, word_gap, workdir)
        total = (speech.size / SAMPLE_RATE) + lead + tail
        if speech.size == 0 or not (lo <= total <= hi):
            continue
        gain = float(rng.uniform(0.5, 0.9))
        y = np.concatenate([np.zeros(int(lead * SAMPLE_RATE), np.float32),
                            speech / max(float(np.abs(speech).max()), 1e-6) * gain,
                            np.zeros(int(tail * SAMPLE_RATE), np.float32)])
        return y, dict(text=text, voice=voice, rate=rate, pitch=pitch, word_gap=word_gap, gain=round(gain, 4),
                       lead_s=round(int(lead * SAMPLE_RATE) / SAMPLE_RATE, 4))
    raise RuntimeError(f"could not draw a {lo}-{hi} s clip in {max_tries} tries (split {split!r})")


def make_corpus(out_dir: str | Path, n_clips: int, seed: int, split: str,
                seconds: tuple[float, float] = (MIN_SECONDS, MAX_SECONDS)) -> list[SpeechClip]:
    """Write ``n_clips`` FLAC clips (16 kHz mono, 16 bit, each lasting ``seconds``) of ``split`` into
    ``out_dir`` plus ``manifest.json`` (a list of :class:`SpeechClip` dicts). Returns the clips."""
    import soundfile as sf

    if split not in SPLITS:
        raise ValueError(f"make_corpus: split {split!r} is not one of {SPLITS}")
    if not (0 < seconds[0] < seconds[1]):
        raise ValueError(f"make_corpus: seconds must be an increasing (min, max) pair, got {seconds!r}")
    if not isinstance(n_clips, (int, np.integer)) or n_clips < 1:
        raise ValueError(f"make_corpus: n_clips must be a positive integer, got {n_clips!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([int(seed), SPLITS.index(split), 0x5EEC])
    clips: list[SpeechClip] = []
    seen: set[str] = set()
    with tempfile.TemporaryDirectory() as tmp:
        while len(clips) < n_clips:
            y, info = _draw_clip(rng, split, Path(tmp), seconds=tuple(seconds))
            if info["text"] in seen:  # keep sentences unique within the split
                continue
            seen.add(info["text"])
            cid = f"{split}_{len(clips):05d}"
            name = f"{cid}.flac"
            sf.write(str(out / name), y, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
            clips.append(SpeechClip(id=cid, file=name, duration=round(y.size / SAMPLE_RATE, 4), split=split, **info))
    (out / MANIFEST).write_text(json.dumps([asdict(c) for c in clips], indent=1))
    log.info("wrote %d %s clips to %s", len(clips), split, out)
    return clips


def read_manifest(corpus_dir: str | Path) -> list[SpeechClip]:
    path = Path(corpus_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"no {MANIFEST} in {corpus_dir}: make the corpus first (build.py speech)")
    return [SpeechClip(**d) for d in json.loads(path.read_text())]
