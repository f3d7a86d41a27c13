"""The aims of issue 10 item 6 checked on bench.realtime records, and the README table made from its JSON."""
from __future__ import annotations

AIMS = (
    # (text, record filter, key, target, ratio_to_teacher)
    ("student, 4 steps, tiny autoencoder: >= 100 FPS", ("student", 4, "tiny"), "fps", 100.0),
    ("student, 2 steps, stock Wan VAE: >= 25 FPS", ("student", 2, "wan"), "fps", 25.0),
    ("student (4 steps, tiny autoencoder) vs dense teacher (20 steps, CFG, stock VAE), same run: >= 30x",
     ("student", 4, "tiny"), "speedup_vs_teacher", 30.0),
    ("student (4 steps, stock Wan VAE) vs dense teacher, same run: >= 30x", ("student", 4, "wan"),
     "speedup_vs_teacher", 30.0),
)
# The same aims with the stock Wan VAE's weights run channels-last (IASA VAE Precision): judged only where the run
# has that VAE (``--vaes wan_channels_last``).
OPTIONAL_AIMS = (
    ("student, 2 steps, stock Wan VAE, channels-last (IASA VAE Precision): >= 25 FPS",
     ("student", 2, "wan_channels_last"), "fps", 25.0),
    ("student (4 steps, stock Wan VAE, channels-last) vs dense teacher, same run: >= 30x",
     ("student", 4, "wan_channels_last"), "speedup_vs_teacher", 30.0),
)


def _find(records: list[dict], variant: str, steps: int, vae: str) -> dict | None:
    return next((r for r in records if (r["variant"], r["steps"], r["vae"]) == (variant, steps, vae)), None)


def aims(records: list[dict], measured: bool) -> list[dict]:
    """One entry per aim: its value and ``met`` (None when the record is missing or this is not a GPU
    measurement: a CPU dry run checks the code path, not the speed)."""
    out = []
    for optional, group in ((False, AIMS), (True, OPTIONAL_AIMS)):
        for text, (variant, steps, vae), key, target in group:
            rec = _find(records, variant, steps, vae)
            if rec is None and optional:
                continue
            value = None if rec is None else rec.get(key)
            met = None if (value is None or not measured) else bool(value >= target)
            out.append({"aim": text, "value": value, "target": target, "met": met})
    return out


def _cell(ms: float, floor: float | None) -> str:
    return f"{ms:,.1f}" if floor is None else f"{ms:,.1f} ({floor:,.1f})"


def markdown_table(result: dict) -> str:
    """Markdown: one row per record, measured ms with the arithmetic floor in parentheses."""
    shape = result["shape"]
    lines = [f"{result['gpu']}; {shape['frames']} frames at {shape['width']} x {shape['height']} "
             f"({shape['tokens']:,} tokens with the reference); matmul peak "
             f"{result['peak']['matmul']['tflops']} TFLOP/s; decoded frames on the "
             f"{result.get('settings', {}).get('frames_on', 'host')}; `{result['command']}`", "",
             "| variant | steps | VAE | encode ms (floor) | DiT ms (floor) | decode ms (floor) | total ms (floor) "
             "| FPS (floor) | first chunk ms | vs teacher |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["records"]:
        f = r["floor"]
        vs = "1.00x (baseline)" if r["variant"] == "teacher" else (
            "-" if r.get("speedup_vs_teacher") is None else f"{r['speedup_vs_teacher']:.2f}x")
        lines.append(f"| {r['variant']} | {r['steps']} | {r['vae']} | {_cell(r['ms_encode'], f['ms_encode'])} | "
                     f"{_cell(r['ms_dit'], f['ms_dit'])} | {_cell(r['ms_decode'], f['ms_decode'])} | "
                     f"{_cell(r['ms_total'], f['ms_total'])} | {r['fps']:.1f} ({f['fps']:.1f}) | "
                     f"{r['first_chunk_ms']:,.1f} | {vs} |")
    lines.append("")
    for a in result.get("aims", []):
        mark = {True: "met", False: "**not met**", None: "not measured"}[a["met"]]
        value = "-" if a["value"] is None else f"{a['value']:.1f}"
        lines.append(f"- {a['aim']}: {value} ({mark})")
    return "\n".join(lines)
