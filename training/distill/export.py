"""Writing a student and finding its card again.

* :func:`save_student`: the weights in the stock key layout (``tiny_wan.save_model``: stock ``UNETLoader``
  loads them as ``WAN21``) with the model card in the header (``tiny_wan.CARD_KEY``) and beside the file.
* :func:`save_lora`: the student as a LoRA over its teacher for stock ``LoraLoaderModelOnly``: each 2-D
  weight's difference as ``lora_up @ lora_down`` (truncated SVD, ``alpha = rank``: scale 1), every other
  changed tensor as a full ``.diff`` / ``.diff_b`` (ComfyUI's ``comfy.lora.load_lora`` key names).
* :func:`find_student_card`: ComfyUI's MODEL does not keep a file's metadata, so a student is recognised
  by its weights: the card attached by the distill node, else the file among the given diffusion-model
  files (or LoRA files, for a teacher with the student LoRA applied) whose ``head.modulation`` equals the
  model's. Only files whose card has a ``student`` section are considered.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable

import torch

from ..tiny_wan import CARD_KEY, save_model

log = logging.getLogger(__name__)
ATTACHMENT = "iasa_student_card"
FINGERPRINT_KEY = "head.modulation"
LORA_PREFIX = "diffusion_model."


def save_student(module: torch.nn.Module, path: str | Path, card: dict, dtype: torch.dtype | None) -> Path:
    if "student" not in card:
        raise ValueError("save_student: the card needs a 'student' section (timesteps, shift)")
    return save_model(module, path, card, dtype=dtype)


def lora_state_dict(teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor], rank: int,
                    dtype: torch.dtype = torch.float32) -> tuple[dict[str, torch.Tensor], dict]:
    """LoRA tensors taking ``teacher`` to ``student`` and a report (max relative error of the low-rank parts)."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    out: dict[str, torch.Tensor] = {}
    worst = 0.0
    for k, s in student.items():
        d = s.detach().float().cpu() - teacher[k].detach().float().cpu()
        if not torch.any(d):
            continue
        base = LORA_PREFIX + (k[:-len(".weight")] if k.endswith(".weight") else k[:-len(".bias")] if k.endswith(".bias") else k)
        if k.endswith(".weight") and d.ndim == 2:
            u, sv, vh = torch.linalg.svd(d, full_matrices=False)
            r = min(rank, sv.numel())
            root = sv[:r].sqrt()
            up, down = u[:, :r] * root, root[:, None] * vh[:r]
            worst = max(worst, float((up @ down - d).norm() / d.norm()))
            out[f"{base}.lora_up.weight"] = up.to(dtype).contiguous()
            out[f"{base}.lora_down.weight"] = down.to(dtype).contiguous()
            out[f"{base}.alpha"] = torch.tensor(float(r))
        elif k.endswith(".bias"):
            out[f"{base}.diff_b"] = d.to(dtype).contiguous()
        else:
            out[f"{base}.diff"] = d.to(dtype).contiguous()
    return out, {"rank": rank, "max_relative_error": round(worst, 6), "tensors": len(out)}


def save_lora(teacher: torch.nn.Module, student: torch.nn.Module, rank: int, path: str | Path, card: dict) -> tuple[Path, dict]:
    from ..tiny_wan import _atomic_save_safetensors

    tensors, report = lora_state_dict(teacher.state_dict(), student.state_dict(), rank)
    card = {**card, "format": "LoRA over the teacher for stock LoraLoaderModelOnly (strength 1)", "lora": report}
    text = json.dumps(card, indent=1, sort_keys=True, default=str)
    path = _atomic_save_safetensors(tensors, Path(path), {CARD_KEY: text})
    side = path.with_suffix(".json")
    tmp = side.with_name(f".{side.name}.tmp")
    tmp.write_text(text + "\n")
    tmp.replace(side)
    return path, report


# ----------------------------------------------------------------------------------------- finding a card
_HEADER_CACHE: dict[tuple[str, float, int], dict | None] = {}


def _student_card_of(path: Path) -> dict | None:
    """The card of a safetensors file when it is a student's (cached by path, mtime, size)."""
    try:
        st = path.stat()
    except OSError:
        return None
    key = (str(path), st.st_mtime, st.st_size)
    if key not in _HEADER_CACHE:
        card = None
        if path.suffix in (".safetensors", ".sft"):
            try:
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as f:
                    raw = (f.metadata() or {}).get(CARD_KEY)
                card = json.loads(raw) if raw else None
            except Exception as e:  # unreadable or foreign files are not students
                log.debug("not a student card: %s (%s)", path, e)
        _HEADER_CACHE[key] = card if isinstance(card, dict) and "student" in card else None
    return _HEADER_CACHE[key]


def _tensor(path: Path, key: str) -> torch.Tensor | None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(key) if key in f.keys() else None


FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def _distance(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Relative max difference when ``a`` (a file's) and ``b`` (a loaded model's) are the same weights up to a
    dtype cast (bf16 / fp16 / fp32 of one file; a file loaded in fp8, UNETLoader's ``weight_dtype``), else None."""
    if b.dtype in FP8_DTYPES:
        a = a.to(b.dtype)     # the loader's own cast: fp8 rounding is far above the tolerance below
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    if a.shape != b.shape or not torch.allclose(a, b, rtol=2e-3, atol=1e-6):
        return None
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _best(candidates: Iterable[tuple[Path, torch.Tensor | None]], target: torch.Tensor) -> Path | None:
    scored = [(d, p) for p, t in candidates if t is not None and (d := _distance(t, target)) is not None]
    return min(scored, key=lambda x: x[0])[1] if scored else None


def _lora_diff(model_patcher, key: str) -> torch.Tensor | None:
    """The ``diff`` tensor a LoRA patched onto ``key`` (ComfyUI's patch tuples), if any."""
    for entry in (getattr(model_patcher, "patches", None) or {}).get(key, []):
        value = entry[1]
        if isinstance(value, tuple) and len(value) == 2 and value[0] == "diff":
            return value[1][0]
    return None


def find_student_card(model_patcher, diffusion_files: Iterable[Path], lora_files: Iterable[Path] = ()) -> tuple[dict, str] | None:
    """``(card, where)`` of a ComfyUI MODEL that is a student, or None."""
    attached = model_patcher.get_attachment(ATTACHMENT) if hasattr(model_patcher, "get_attachment") else None
    if attached:
        return attached, "attached by IASA Distill Student"
    diff = _lora_diff(model_patcher, LORA_PREFIX + FINGERPRINT_KEY)
    if diff is not None:
        cands = [(Path(p), _tensor(Path(p), f"{LORA_PREFIX}{FINGERPRINT_KEY}.diff")) for p in lora_files
                 if _student_card_of(Path(p))]
        found = _best(cands, diff)
        if found is not None:
            return _student_card_of(found), found.name
    dm = getattr(getattr(model_patcher, "model", None), "diffusion_model", None)
    weights = dict(dm.named_parameters()).get(FINGERPRINT_KEY) if dm is not None else None
    if weights is None:
        return None
    found = _best([(Path(p), _tensor(Path(p), FINGERPRINT_KEY)) for p in diffusion_files
                   if _student_card_of(Path(p))], weights)
    return (_student_card_of(found), found.name) if found is not None else None


def find_weights_file(module: torch.nn.Module, files: Iterable[Path]) -> Path | None:
    """The safetensors file among ``files`` whose ``head.modulation`` equals ``module``'s (a teacher's file)."""
    weights = dict(module.named_parameters()).get(FINGERPRINT_KEY)
    if weights is None:
        return None

    def read(p: Path) -> torch.Tensor | None:
        try:
            return _tensor(p, FINGERPRINT_KEY) if p.suffix in (".safetensors", ".sft") else None
        except Exception:  # a foreign or broken file is simply not the teacher's
            return None

    return _best([(Path(p), read(Path(p))) for p in files], weights)


def read_card(path: str | Path) -> dict:
    """The model card in a safetensors header (``{}`` when there is none); reads the header only."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(CARD_KEY)
    return json.loads(raw) if raw else {}
