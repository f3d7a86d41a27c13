"""bench.realtime: the student schedule, the FLOP counters behind the floors, the aims and the README table,
and a CPU dry run of the whole benchmark at tiny shapes (ComfyUI's own modules, the IASA patch on a
ModelPatcher, blocks compiled by ComfyUI's helper with dynamo's eager backend). No timing is asserted."""
from __future__ import annotations

import json

import pytest
import torch

from iasa.bench import floors
from iasa.bench.realtime_report import aims, markdown_table
from iasa.bench.realtime import student_sigmas
from .torch_threads import one_thread  # noqa: F401  (autouse fixture)


def test_student_schedule_is_the_shift_5_four_step_one():
    assert torch.allclose(student_sigmas(4) * 1000, torch.tensor([1000.0, 937.5, 833.333, 625.0, 0.0]), atol=1e-3)
    assert torch.allclose(student_sigmas(2) * 1000, torch.tensor([1000.0, 833.333, 0.0]), atol=1e-3)
    assert torch.equal(student_sigmas(1), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError):
        student_sigmas(5)


def test_linear_flops_counts_every_linear_and_conv_of_the_forward():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Flatten(2), torch.nn.Linear(25, 4),
                              torch.nn.Conv2d(8, 8, 1, groups=2))
    x = torch.randn(2, 3, 5, 5)
    with floors.linear_flops(net) as c:
        h = net[2](net[1](net[0](x)))                    # [2, 8, 4]
        net[3](h[..., None])
    conv = 2 * (2 * 8 * 5 * 5) * 3 * 9
    lin = 2 * (2 * 8 * 4) * 25
    grouped = 2 * (2 * 8 * 4 * 1) * 4
    assert c.flops == conv + lin + grouped and c.calls == 3
    with floors.linear_flops(net) as c2:
        pass
    assert c2.flops == 0                                  # hooks are removed and counters fresh
    assert floors.attention_flops(10, 20, 64, layers=3, density=0.5) == 4 * 10 * 20 * 64 * 3 * 0.5
    assert floors.all_flops(lambda: torch.randn(4, 6) @ torch.randn(6, 5)) == 2 * 4 * 6 * 5
    assert floors.floor_ms(1e12, 500.0) == pytest.approx(2.0)
    assert floors.copy_ms(4e9, 20.0) == pytest.approx(200.0) and floors.copy_ms(10, None) == 0.0


def _rec(variant, steps, vae, fps, speedup):
    return {"variant": variant, "steps": steps, "vae": vae, "fps": fps, "speedup_vs_teacher": speedup,
            "ms_encode": 1.0, "ms_dit": 2.0, "ms_decode": 3.0, "ms_total": 6.0, "first_chunk_ms": 1.5,
            "floor": {"ms_encode": 0.5, "ms_dit": 1.0, "ms_decode": 1.5, "ms_total": 3.0, "fps": 2 * fps}}


def test_aims_are_judged_only_on_a_gpu_measurement_and_the_table_has_every_record():
    records = [_rec("student", 4, "tiny", 120.0, 35.0), _rec("student", 2, "wan", 20.0, 9.0),
               _rec("student", 4, "wan", 24.0, 12.0), _rec("teacher", 20, "wan", 1.0, 1.0)]
    got = aims(records, measured=True)
    assert [a["met"] for a in got] == [True, False, True, False]
    assert [a["value"] for a in got] == [120.0, 20.0, 35.0, 12.0]
    assert all(a["met"] is None for a in aims(records, measured=False))
    assert aims(records[1:], measured=True)[0] == {"aim": got[0]["aim"], "value": None, "target": 100.0, "met": None}
    result = {"gpu": "X", "shape": {"frames": 81, "width": 832, "height": 480, "tokens": 34320},
              "peak": {"matmul": {"tflops": 600.0}}, "command": "c", "records": records, "aims": got}
    table = markdown_table(result)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "variant" not in line]
    assert len(rows) == 4 and "1.00x (baseline)" in rows[-1] and "35.00x" in rows[0]
    assert "120.0 (240.0)" in rows[0] and "**not met**" in table


def test_cpu_dry_run_through_comfyui_with_the_patch_and_compiled_blocks(tmp_path, capsys):
    from iasa.bench.realtime import main

    out = tmp_path / "rt.json"
    result = main(["--tiny", "--compile", "eager", "--out", str(out), "--steps", "1", "--vaes", "tiny",
                   "--variants", "student", "student_no_self_attention", "teacher", "--teacher-steps", "1",
                   "--repeats", "1"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result, default=str))
    assert {"command", "gpu", "versions"} <= set(result) and result["command"].startswith("python iasa_cli.py bench.realtime")
    assert "CPU dry run" in result["gpu"] and result["versions"]["comfyui"] == "0.3.75"
    assert result["shape"]["tokens"] == 3 * 4 * 6 + 4 * 6          # 3 latent frames of 4x6 tokens + reference
    student, no_attention, teacher = result["records"]
    for rec in (student, no_attention, teacher):
        assert {"variant", "steps", "vae", "ms_encode", "ms_dit", "ms_decode", "fps", "first_chunk_ms"} <= set(rec)
        assert rec["fps"] == pytest.approx(9 / (rec["ms_total"] / 1000), abs=0.006)   # rounded to 0.01
        assert all(rec["floor"][k] > 0 for k in ("ms_encode", "ms_dit", "ms_decode", "first_chunk_ms"))
    assert (student["variant"], student["vae"], student["attention"]) == ("student", "tiny", "iasa_sdpa")
    assert student["sparse_calls"]["sparse"] > 0 and teacher["sparse_calls"] == {}
    # the diagnostic: the student's path with self-attention returning v, whose floor has no attention term
    assert (no_attention["variant"], no_attention["attention"], no_attention["cfg"]) == (
        "student_no_self_attention", "none (diagnostic)", 1.0)
    assert no_attention["sparse_calls"] == {} and no_attention["floor"]["ms_dit"] < student["floor"]["ms_dit"]
    assert (teacher["cfg"], teacher["speedup_vs_teacher"]) == (5.0, 1.0)
    # the teacher runs cond + uncond: twice the student's forwards at the same step count and shape
    assert teacher["floor"]["ms_dit"] > 1.5 * student["floor"]["ms_dit"]
    assert result["compile_stats"]["stats"].get("unique_graphs", 0) > 0    # the blocks really went through dynamo
    assert result["device_ms"]["tiny"]["decode_ms_frame_by_frame"] > 0
    assert all(a["met"] is None for a in result["aims"])
    assert "| student | 1 | tiny |" in capsys.readouterr().out


def test_fun_control_conditioning_equals_stock_wan22_fun_control_to_video():
    from iasa.training.comfy_env import ensure_comfy_on_path

    ensure_comfy_on_path()
    import comfy.sd
    from comfy_extras.nodes_wan import Wan22FunControlToVideo

    from iasa.bench.realtime import Shape, fun_control_conditioning
    from iasa.training.tiny_wan import VAEConfig, build_vae

    net = build_vae(VAEConfig(dim=8), seed=3)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    vae = comfy.sd.VAE(sd=net.state_dict())
    video = torch.rand(9, 32, 48, 3, generator=g)
    ctx = [[torch.zeros(1, 3, 4096), {}]]
    ref = video[:1]
    pos, _, latent = Wan22FunControlToVideo.execute(ctx, ctx, vae, 48, 32, 9, 1, ref_image=ref, control_video=video).args
    neg, _, _ = Wan22FunControlToVideo.execute(ctx, ctx, vae, 48, 32, 9, 1, ref_image=ref).args
    mine_pos, mine_neg, mine_latent = fun_control_conditioning(ctx, vae.encode(video), vae.encode(ref), Shape(9, 32, 48))
    assert torch.equal(mine_latent, latent["samples"])
    for stock, mine in ((pos, mine_pos), (neg, mine_neg)):
        a, b = stock[0][1], mine[0][1]
        assert set(a) == set(b) == {"concat_latent_image", "concat_mask", "concat_mask_index", "reference_latents"}
        torch.testing.assert_close(b["concat_latent_image"], a["concat_latent_image"], atol=1e-5, rtol=1e-5)
        assert torch.equal(b["concat_mask"], a["concat_mask"]) and b["concat_mask_index"] == a["concat_mask_index"]
        torch.testing.assert_close(b["reference_latents"][0], a["reference_latents"][0], atol=1e-5, rtol=1e-5)
    assert float(mine_pos[0][1]["concat_latent_image"][:, :16].detach().std()) > 0   # the pose video is in
    assert not torch.equal(mine_pos[0][1]["concat_latent_image"], mine_neg[0][1]["concat_latent_image"])


def test_reference_attends_itself_is_timed_with_its_smaller_layout(tmp_path):
    """--reference-attends itself: the student's layout drops the reference rows to the video (less exact density
    than the default layout on the same pose), and the run says which layout it timed."""
    from iasa.bench.realtime import main

    runs = {}
    for mode in ("everything", "itself"):
        runs[mode] = main(["--tiny", "--compile", "eager", "--out", str(tmp_path / f"{mode}.json"), "--steps", "1",
                           "--vaes", "tiny", "--variants", "student", "--repeats", "1", "--reference-attends", mode])
    assert runs["itself"]["settings"]["layout"]["reference_attends"] == "itself"
    assert runs["itself"]["density"]["token_density"] < runs["everything"]["density"]["token_density"]
    assert runs["itself"]["records"][0]["sparse_calls"]["sparse"] > 0


def test_fp8_student_is_the_student_path_on_weights_loaded_as_unetloader_fp8_fast(tmp_path):
    """student_fp8: the same patched, sparse path on a DiT loaded with UNETLoader's "fp8_e4m3fn_fast" options (fp8
    weights; on the CPU ComfyUI casts them for its matmuls), labelled as such next to the bf16/fp32 student."""
    from iasa.bench.realtime import main

    result = main(["--tiny", "--compile", "eager", "--out", str(tmp_path / "rt.json"), "--steps", "1", "--vaes",
                   "tiny", "--variants", "student", "student_fp8", "--repeats", "1"])
    student, fp8 = result["records"]
    assert (fp8["variant"], fp8["weights"], fp8["attention"]) == ("student_fp8", "fp8_e4m3fn_fast (UNETLoader)",
                                                                  "iasa_sdpa")
    assert student["weights"] == "float32" and fp8["sparse_calls"]["sparse"] > 0
    assert fp8["fp8_matmul"] is False and "fp8_matmul" not in student   # no fp8 compute on a CPU: weights cast
    assert fp8["floor"]["ms_dit"] == student["floor"]["ms_dit"]


def test_comfy_flags_run_comfyui_as_its_command_line_would(tmp_path):
    """--comfy-flags go through ComfyUI's own parser before its model management loads (a fresh process:
    ComfyUI reads them at import), and the run records them; an unknown flag is refused with a clear error."""
    import subprocess
    import sys
    from pathlib import Path

    ROOT = Path(__file__).resolve().parents[2]
    out = tmp_path / "rt.json"
    base = [sys.executable, str(ROOT / "iasa_cli.py"), "bench.realtime", "--tiny", "--compile", "eager", "--steps", "1",
            "--vaes", "tiny", "--variants", "student", "--repeats", "1"]
    done = subprocess.run([*base, "--out", str(out), "--comfy-flags=--gpu-only --fast autotune"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    settings = json.loads(out.read_text())["settings"]
    assert settings["comfy_flags"] == ["--gpu-only", "--fast", "autotune"]
    assert settings["comfy_fast"] == ["autotune"]      # ComfyUI's own post-processing of --fast ran
    bad = subprocess.run([*base, "--out", str(tmp_path / "bad.json"), "--comfy-flags=--no-such-flag"],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "ComfyUI does not accept the flags" in bad.stderr
    assert not (tmp_path / "bad.json").exists()


def test_comfy_flags_after_model_management_is_loaded_are_refused():
    from iasa.training.comfy_env import apply_comfy_flags, ensure_comfy_on_path

    ensure_comfy_on_path()
    import comfy.model_management  # noqa: F401

    with pytest.raises(RuntimeError, match="too late"):
        apply_comfy_flags(["--gpu-only"])


def test_stock_vae_channels_last_is_timed_beside_the_stock_layout(tmp_path):
    """--vaes wan wan_channels_last: the same stock Wan VAE weights, once as VAELoader gives them and once through
    IASA VAE Precision's channels-last copy (every 3-D convolution weight channels-last); both paths timed with
    the same FLOPs, and the stock-VAE aims judged for the channels-last one too."""
    from iasa.bench.realtime import main

    result = main(["--tiny", "--compile", "eager", "--out", str(tmp_path / "rt.json"), "--steps", "2", "--vaes",
                   "wan", "wan_channels_last", "--variants", "student", "--repeats", "1"])
    assert result["model"]["vae_conv_layout"] == {"wan": "contiguous", "wan_channels_last": "channels_last_3d"}
    stock, channels_last = result["records"]
    assert (stock["vae"], channels_last["vae"]) == ("wan", "wan_channels_last")
    assert channels_last["floor"]["ms_decode"] == pytest.approx(stock["floor"]["ms_decode"])
    assert {a["aim"].split(":")[0] for a in result["aims"]} >= {
        "student, 2 steps, stock Wan VAE", "student, 2 steps, stock Wan VAE, channels-last (IASA VAE Precision)"}


def test_tiny_encode_times_the_student_workflows_split_the_tiny_encoder_and_the_stock_decoder(tmp_path):
    """--vaes tiny_encode: the pose video encoded by the tiny autoencoder and the latent decoded by the stock VAE
    (channels-last), as the pack's student workflow runs them; its encode terms are the tiny one's, its decode terms
    the stock VAE's."""
    from iasa.bench.realtime import main

    result = main(["--tiny", "--compile", "eager", "--out", str(tmp_path / "rt.json"), "--steps", "2", "--vaes",
                   "tiny", "tiny_encode", "--variants", "student", "--repeats", "1"])
    assert result["model"]["vae_conv_layout"]["wan_channels_last"] == "channels_last_3d"
    flops = result["flops"]["vae"]
    assert flops["tiny_encode"] == {"encode": flops["tiny"]["encode"], "decode": flops["wan_channels_last"]["decode"]}
    assert flops["wan_channels_last"]["decode"] != flops["tiny"]["decode"]
    tiny, split = result["records"]
    assert (tiny["vae"], split["vae"]) == ("tiny", "tiny_encode")
    assert split["floor"]["ms_encode"] == pytest.approx(tiny["floor"]["ms_encode"])
    assert split["floor"]["ms_decode"] != pytest.approx(tiny["floor"]["ms_decode"])
    assert result["device_ms"]["tiny_encode"]["encode_ms"] == result["device_ms"]["tiny"]["encode_ms"]
