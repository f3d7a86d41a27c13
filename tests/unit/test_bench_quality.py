"""bench/quality.py pieces that need no server: metrics, clip lengths, the prompt derived from the talking workflow."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from iasa.bench.quality import CPU_FP8_PLUGIN, FP8_FIRST_CALL, WORKFLOW, keyed_windows, quality_prompt, wan_length
from iasa.bench.video_metrics import (correlation, gradient_energy, mean_scores, mouth_audio_corr, mouth_change, psnr,
                                      sharpness, ssim)


def test_psnr_known_values_and_masks():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[..., 0] = 255
    assert psnr(a, b) == pytest.approx(10 * math.log10(3))  # mse = 255^2 / 3
    assert psnr(a, a) == math.inf
    mask = np.zeros((2, 4, 4), bool)
    assert math.isnan(psnr(a, b, mask))
    c = a.copy()
    c[:, :2] = 10
    mask[:, 2:] = True
    assert psnr(a, c, mask) == math.inf and psnr(a, c) < 40
    with pytest.raises(ValueError, match="mask shape"):
        psnr(a, b, mask[:1])
    with pytest.raises(ValueError, match="one shape"):
        psnr(a, b[:1])


def test_ssim_is_one_for_identical_and_lower_for_noise():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, rng.integers(0, 256, a.shape, dtype=np.uint8)) < 0.2


def test_sharpness_is_one_for_the_truth_below_one_for_a_blur_that_psnr_prefers():
    """A blurred copy of noisy-edged frames scores higher PSNR than a sharp frame shifted by a pixel, yet a lower
    sharpness: the score PSNR cannot give."""
    rng = np.random.default_rng(1)
    truth = np.zeros((3, 32, 32, 3), np.uint8)
    truth[:, :, ::4] = 200                                   # vertical stripes: strong x gradients
    truth = np.clip(truth + rng.integers(0, 30, truth.shape), 0, 255).astype(np.uint8)
    f = truth.astype(np.float32)
    blurred = ((f + np.roll(f, 1, 2) + np.roll(f, -1, 2) + np.roll(f, 2, 2) + np.roll(f, -2, 2)) / 5).astype(np.uint8)
    shifted = np.roll(truth, 1, axis=2)
    assert sharpness(truth, truth) == pytest.approx(1.0)
    assert psnr(blurred, truth) > psnr(shifted, truth)
    assert sharpness(blurred, truth) < 0.5 < 0.95 < sharpness(shifted, truth)
    flat = np.full_like(truth, 90)
    assert sharpness(flat, truth) == 0.0 and math.isnan(sharpness(truth, flat))
    # inside a mask: only the gradients that start there count
    mask = np.zeros(truth.shape[:3], bool)
    mask[:, :, :16] = True
    half = truth.copy()
    half[:, :, 17:] = 90                                     # the difference from column 15 to 16 stays
    assert sharpness(half, truth, mask) == pytest.approx(1.0) and sharpness(half, truth) < 0.7
    assert math.isnan(gradient_energy(truth, np.zeros_like(mask)))


def test_mouth_audio_corr_follows_a_mouth_that_opens_with_energy():
    T = 20
    energy = np.abs(np.sin(np.linspace(0, 3, T))).astype(np.float32)
    frames = np.full((T, 16, 16, 3), 100, np.uint8)
    lips = np.zeros((T, 16, 16), bool)
    lips[:, 8:12, 6:10] = True
    for t in range(T):
        frames[t, 9:11, 6:10] = 100 - 80 * energy[t] + 80 * energy[0]  # darker = more open
    assert mouth_change(frames, lips).shape == (T - 1,)
    assert mouth_audio_corr(frames, lips, energy) > 0.99
    still = np.repeat(frames[:1], T, axis=0)
    assert math.isnan(mouth_audio_corr(still, lips, energy))  # no change at all: undefined, not 0
    assert math.isnan(mouth_audio_corr(frames, np.zeros_like(lips), energy))
    assert math.isnan(correlation([1, 2], [1, 2]))


def test_mean_scores_skips_nan_and_reports_none_when_empty():
    out = mean_scores([{"a": 1.0, "b": float("nan")}, {"a": 3.0, "b": float("nan")}], ("a", "b"))
    assert out == {"a": 2.0, "b": None}


@pytest.mark.parametrize("n, want", [(1, 1), (4, 1), (5, 5), (33, 33), (36, 33), (170, 169)])
def test_wan_length(n, want):
    assert wan_length(n) == want


def test_quality_prompt_keeps_the_workflow_but_drives_it_with_the_given_pose():
    wf = json.loads(WORKFLOW.read_text())
    p = quality_prompt(wf, "iasa_quality/a_ref.png", "iasa_quality/a_pose.json", "q/a", steps=7, cfg=2.5)
    types = {n["class_type"] for n in p.values()}
    assert not types & {"IASALoadAudio", "IASAAudioFeatures", "IASAAudioToPose", "CreateVideo", "SaveVideo"}
    by_type = {n["class_type"]: (k, n) for k, n in p.items()}
    pose_id, pose = by_type["IASALoadPose"]
    assert pose["inputs"]["pose_file"] == "iasa_quality/a_pose.json"
    assert by_type["LoadImage"][1]["inputs"]["image"] == "iasa_quality/a_ref.png"
    assert by_type["IASARenderPose"][1]["inputs"]["pose"] == [pose_id, 0]
    fun = [n for n in p.values() if n["class_type"] == "Wan22FunControlToVideo"]
    assert len(fun) == 2 and all(n["inputs"]["length"] == [pose_id, 1] for n in fun)
    ks = by_type["KSampler"][1]["inputs"]
    assert (ks["steps"], ks["cfg"]) == (7, 2.5)
    # what the workflow itself sets stays: models, shift, sampler, resolution
    orig = {n["class_type"]: n for n in wf.values()}
    for t in ("UNETLoader", "VAELoader", "ModelSamplingSD3"):
        assert by_type[t][1]["inputs"] == orig[t]["inputs"]
    assert ks["sampler_name"] == orig["KSampler"]["inputs"]["sampler_name"]
    save = by_type["SaveImage"][1]["inputs"]
    assert save["images"] == [by_type["IASALongVAEDecode"][0], 0] and save["filename_prefix"] == "q/a"
    assert wf == json.loads(WORKFLOW.read_text())  # the input is not modified


def test_quality_prompt_drives_the_student_workflow_and_refuses_a_cfg_for_it():
    from iasa.harness.demo import STUDENT_WORKFLOW

    wf = json.loads(STUDENT_WORKFLOW.read_text())
    p = quality_prompt(wf, "iasa_quality/a_ref.png", "iasa_quality/a_pose.json", "q/a", steps=2)
    by_type = {n["class_type"]: (k, n) for k, n in p.items()}
    assert not {n["class_type"] for n in p.values()} & {"IASALoadAudio", "IASAAudioToPose", "SaveVideo", "KSampler"}
    pose_id = by_type["IASALoadPose"][0]
    assert by_type["IASASparseAttention"][1]["inputs"]["pose"] == [pose_id, 0]
    assert by_type["Wan22FunControlToVideo"][1]["inputs"]["length"] == [pose_id, 1]
    assert by_type["IASAStudentSampler"][1]["inputs"]["steps"] == 2
    assert by_type["SaveImage"][1]["inputs"]["images"] == [by_type["IASALongVAEDecode"][0], 0]
    with pytest.raises(ValueError, match="cfg 1"):
        quality_prompt(wf, "r.png", "p.json", "q", cfg=3.0)
    both = dict(wf, **{"900": {"class_type": "KSampler", "inputs": {}}})
    with pytest.raises(ValueError, match="one sampler node"):
        quality_prompt(both, "r.png", "p.json", "q")


def test_moved_mask_marks_pixels_that_entered_or_left_a_region():
    from iasa.bench.video_metrics import MOVING_REGIONS, moved_mask

    T, H, W = 3, 8, 8
    masks = {k: np.zeros((T, H, W), bool) for k in MOVING_REGIONS}
    masks["left_hand"][0, 0:2, 0:2] = True       # the hand moves right by 2 px at frame 1, stays at frame 2
    masks["left_hand"][1:, 0:2, 2:4] = True
    masks["torso"][:, 5:, :] = True              # a still torso never counts
    m = moved_mask(masks)
    assert not m[0].any() and not m[:, 5:].any()
    assert m[1].sum() == 8 and m[1, 0:2, 0:4].all() and np.array_equal(m[1], m[2])


def test_psnr_per_second_splits_whole_seconds_and_keeps_a_long_tail():
    from iasa.bench.video_metrics import psnr_per_second

    gt = np.zeros((50, 4, 4, 3), np.uint8)
    gen = gt.copy()
    gen[40:] = 10                                # only the third (partial, 10-frame) second is wrong
    per = psnr_per_second(gen, gt, fps=20)
    assert len(per) == 3 and per[0] == per[1] == math.inf and per[2] < 40
    assert len(psnr_per_second(gen[:45], gt[:45], fps=20)) == 2      # a 5-frame tail (< half a second) is dropped
    assert len(psnr_per_second(gen[:7], gt[:7], fps=20)) == 1        # shorter than a second: the whole clip


def test_reference_copy_baseline_is_perfect_where_nothing_moved_and_poor_where_the_pose_moved():
    from iasa.bench.quality import reference_copy_record
    from iasa.bench.video_metrics import MOVING_REGIONS

    T = 9
    frames = np.full((T, 16, 16, 3), 40, np.uint8)
    masks = {k: np.zeros((T, 16, 16), bool) for k in MOVING_REGIONS}
    for t in range(T):                           # a bright hand that moves across the frame
        frames[t, 4:8, t:t + 4] = 220
        masks["left_hand"][t, 4:8, t:t + 4] = True
    clip = {"id": "c", "frames": frames, "masks": masks, "energy": np.linspace(0, 1, T).astype(np.float32)}
    rec = reference_copy_record([clip])
    assert rec["model"] == "reference_copy" and rec["clips"] == 1
    assert rec["psnr_moved"] < 10 < rec["psnr"]
    assert rec["psnr_per_second"] == [rec["per_clip"][0]["psnr_per_second"][0]]


def test_quality_prompt_dense_bypasses_iasa_sparse_attention_and_rewires_its_pose():
    wf = json.loads(WORKFLOW.read_text())
    by = {n["class_type"]: k for k, n in wf.items()}
    (sampler,) = [k for k, n in wf.items() if n["class_type"] == "KSampler"]
    model_in = wf[sampler]["inputs"]["model"]
    wf["500"] = {"class_type": "IASASparseAttention", "inputs": {"model": model_in, "pose": [by["IASAAudioToPose"], 0]}}
    wf[sampler]["inputs"]["model"] = ["500", 0]
    sparse = quality_prompt(wf, "r.png", "p.json", "q/s")
    assert sparse["500"]["inputs"]["pose"] == [by["IASALoadPose"], 0] and sparse[sampler]["inputs"]["model"] == ["500", 0]
    dense = quality_prompt(wf, "r.png", "p.json", "q/d", attention="dense")
    assert "500" not in dense and dense[sampler]["inputs"]["model"] == model_in
    with pytest.raises(ValueError, match="attention"):
        quality_prompt(wf, "r.png", "p.json", "q", attention="flex")


def test_vae_records_score_the_tiny_autoencoder_against_the_frames_and_the_full_vae(tmp_path):
    import torch

    from iasa.bench.quality import vae_records
    from iasa.bench.video_metrics import MOVING_REGIONS
    from iasa.training.tiny_vae import build_tiny_vae, save_tiny_vae
    from iasa.training.tiny_wan import VAEConfig, build_vae, save_model

    torch.set_num_threads(1)
    T = 5
    rng = np.random.default_rng(0)
    clip = {"id": "c", "frames": rng.integers(0, 255, (T, 16, 16, 3), dtype=np.uint8),
            "masks": {k: np.ones((T, 16, 16), bool) for k in MOVING_REGIONS},
            "energy": np.linspace(0, 1, T).astype(np.float32)}
    vae = save_model(build_vae(VAEConfig(dim=8), seed=1), tmp_path / "vae.safetensors", {}, dtype=torch.float32)
    tiny = save_tiny_vae(build_tiny_vae(seed=2), tmp_path / "tiny.safetensors", {})
    full, small = vae_records([clip], vae, tiny)
    assert (full["model"], small["model"]) == ("vae", "tiny_vae") and small["weights"] == "tiny.safetensors"
    entry = small["per_clip"][0]
    assert entry["frames"] == T and np.isfinite(entry["psnr_vs_full_vae"]) and np.isfinite(small["psnr"])
    assert small["psnr_vs_full_vae"] == round(entry["psnr_vs_full_vae"], 4)
    # The comparison is against the full VAE's own decode: the full VAE in the tiny slot matches it exactly.
    _, same = vae_records([clip], vae, vae)
    assert same["per_clip"][0]["psnr_vs_full_vae"] == math.inf == same["per_clip"][0]["psnr_roundtrip_vs_full_vae"]
    assert [r["model"] for r in vae_records([clip], vae)] == ["vae"]
    # With a workflow's keyed windows (here 5-frame windows sharing 2 frames on a 9-frame clip: 2 windows) the
    # vae_keyed record is the per-window round trip; a clip of one window gets none.
    long_clip = {**clip, "frames": rng.integers(0, 255, (9, 16, 16, 3), dtype=np.uint8),
                 "masks": {k: np.ones((9, 16, 16), bool) for k in MOVING_REGIONS},
                 "energy": np.linspace(0, 1, 9).astype(np.float32)}
    records = vae_records([long_clip, {**long_clip, "id": "d"}], vae, keyed=(5, 2))
    assert [r["model"] for r in records] == ["vae", "vae_keyed"] and np.isfinite(records[1]["psnr"])
    assert len(records[1]["per_clip"]) == 2
    assert [r["model"] for r in vae_records([clip], vae, keyed=(5, 2))] == ["vae"]
    assert keyed_windows(json.loads(WORKFLOW.read_text())) == (49, 8)


def test_demo_timing_decodes_the_demo_latent_with_the_vae_in_both_precisions_and_the_tiny_one_in_both_modes(tmp_path):
    import torch

    from iasa.bench.demo_timing import decode_seconds
    from iasa.training.tiny_vae import build_tiny_vae, save_tiny_vae
    from iasa.training.tiny_wan import VAEConfig, build_vae, save_model

    torch.set_num_threads(1)
    vae = save_model(build_vae(VAEConfig(dim=8), seed=1), tmp_path / "vae.safetensors", {}, dtype=torch.float32)
    tiny = save_tiny_vae(build_tiny_vae(seed=2), tmp_path / "tiny.safetensors", {})
    got = decode_seconds(vae, tiny, frames=5, height=16, width=16)
    assert set(got) == {"vae", "vae_bf16", "vae_bf16_channels_last", "tiny_vae", "tiny_vae_parallel"}
    assert all(v >= 0 for v in got.values())
    assert set(decode_seconds(vae, None, frames=1, height=16, width=16)) == {"vae", "vae_bf16", "vae_bf16_channels_last"}


def test_sampler_settings_read_a_students_steps_from_its_card_and_a_ksamplers_from_the_workflow(tmp_path):
    import torch
    from safetensors.torch import save_file

    from iasa.bench.quality import sampler_settings
    from iasa.harness.demo import STUDENT_WORKFLOW
    from iasa.training.tiny_wan import CARD_KEY

    student = tmp_path / "s.safetensors"
    save_file({"w": torch.zeros(1)}, str(student), metadata={CARD_KEY: json.dumps({"student": {"steps": 3}})})
    shipped = json.loads(STUDENT_WORKFLOW.read_text())
    assert sampler_settings(shipped, student) == {"steps": 2, "cfg": 1.0, "sampler": "IASAStudentSampler"}
    card_steps = json.loads(json.dumps(shipped))
    next(n for n in card_steps.values() if n["class_type"] == "IASAStudentSampler")["inputs"]["steps"] = 0
    assert sampler_settings(card_steps, student) == {"steps": 3, "cfg": 1.0, "sampler": "IASAStudentSampler"}
    ks = next(n for n in json.loads(WORKFLOW.read_text()).values() if n["class_type"] == "KSampler")["inputs"]
    assert sampler_settings(json.loads(WORKFLOW.read_text()), student) == \
        {"steps": ks["steps"], "cfg": ks["cfg"], "sampler": ks["sampler_name"]}


def test_worst_frame_is_the_lowest_single_frame_over_all_clips():
    from iasa.bench.quality import worst_frame
    from iasa.bench.video_metrics import MOVING_REGIONS, clip_scores, psnr_per_frame

    gt = np.full((9, 8, 8, 3), 100, np.uint8)
    gen = gt.copy()
    gen[3] = 110                                 # frame 3: error 10 everywhere -> 28.13 dB
    gen[6, :4] = 104                             # frame 6: error 4 on half the pixels -> 39.1 dB
    per = psnr_per_frame(gen, gt)
    assert per[0] == math.inf and per[3] < per[6] < math.inf
    assert per[3] == pytest.approx(10 * math.log10(255 ** 2 / 100))
    masks = {k: np.zeros((9, 8, 8), bool) for k in MOVING_REGIONS}
    sc = clip_scores(gen, gt, masks, np.linspace(0, 1, 9))
    assert sc["worst_frame"] == 3 and sc["psnr_worst_frame"] == pytest.approx(per[3])
    assert sc["psnr"] > sc["psnr_worst_frame"]  # pooled over the clip: higher than its worst frame
    assert worst_frame([sc, {**sc, "psnr_worst_frame": 31.0}]) == pytest.approx(per[3], abs=1e-4)
    assert worst_frame([{"psnr_worst_frame": math.inf}]) is None   # identical clips: no finite worst frame


def test_no_vae_leaves_out_the_vae_records_and_keeps_the_baseline_and_the_students(tmp_path, monkeypatch):
    from iasa.bench import quality
    from iasa.bench.video_metrics import MOVING_REGIONS

    T = 9
    clip = {"id": "c", "frames": np.full((T, 8, 8, 3), 50, np.uint8), "energy": np.linspace(0, 1, T),
            "masks": {k: np.zeros((T, 8, 8), bool) for k in (*MOVING_REGIONS, "lips")}}
    student, vae = tmp_path / "s.safetensors", tmp_path / "v.safetensors"
    student.write_bytes(b"x")
    vae.write_bytes(b"x")
    calls = []
    monkeypatch.setattr(quality, "pick_clips", lambda data, count, frames: [clip])
    monkeypatch.setattr(quality, "vae_records", lambda *a, **k: calls.append("vae") or [{"model": "vae"}])
    monkeypatch.setattr(quality, "sampled_records", lambda clips, model, *a: [{"model": model.stem}])
    monkeypatch.setattr(quality, "weights_info", lambda p: {"file": p.name})
    common = ["--frames", "9", "--no-teacher", "--tiny-vae", "none", "--vae", str(vae), "--student", str(student)]
    out = quality.main([*common, "--no-vae", "--out", str(tmp_path / "a.json")])
    assert [r["model"] for r in out["records"]] == ["reference_copy", "s"] and calls == []
    out = quality.main([*common, "--out", str(tmp_path / "b.json")])
    assert [r["model"] for r in out["records"]] == ["reference_copy", "vae", "s"] and calls == ["vae"]


def test_student_steps_reach_the_students_runs_and_not_the_teachers(tmp_path, monkeypatch):
    from iasa.bench import quality

    clip = {"id": "c", "frames": np.full((9, 8, 8, 3), 50, np.uint8)}
    files = {n: tmp_path / f"{n}.safetensors" for n in ("t", "s", "v")}
    for f in files.values():
        f.write_bytes(b"x")
    runs = []
    monkeypatch.setattr(quality, "pick_clips", lambda data, count, frames: [clip])
    monkeypatch.setattr(quality, "reference_copy_record", lambda clips: {"model": "reference_copy"})
    monkeypatch.setattr(quality, "sampled_records",
                        lambda clips, model, vae, steps, *a: runs.append((model.stem, list(steps))) or [])
    monkeypatch.setattr(quality, "weights_info", lambda p: {"file": p.name})
    quality.main(["--frames", "9", "--no-vae", "--tiny-vae", "none", "--teacher", str(files["t"]), "--vae",
                  str(files["v"]), "--student", str(files["s"]), "--steps", "20", "--student-steps", "4", "2",
                  "--out", str(tmp_path / "q.json")])
    assert runs == [("t", [20]), ("s", [4, 2])]


def test_weight_dtype_reaches_every_unet_loader_and_fp8_matmul_needs_the_fp8_fast_loader(tmp_path):
    from iasa.bench import quality
    from iasa.harness.demo import STUDENT_WORKFLOW

    wf = json.loads(STUDENT_WORKFLOW.read_text())
    p = quality_prompt(wf, "r.png", "p.json", "q", weight_dtype="fp8_e4m3fn_fast")
    loaders = [n for n in p.values() if n["class_type"] == "UNETLoader"]
    assert loaders and all(n["inputs"]["weight_dtype"] == "fp8_e4m3fn_fast" for n in loaders)
    kept = quality_prompt(wf, "r.png", "p.json", "q")
    assert [n["inputs"]["weight_dtype"] for n in kept.values() if n["class_type"] == "UNETLoader"] == ["default"]
    with pytest.raises(SystemExit, match="needs --weight-dtype fp8_e4m3fn_fast"):
        quality.main(["--no-teacher", "--fp8-matmul-on-cpu", "--weight-dtype", "fp8_e4m3fn",
                      "--out", str(tmp_path / "q.json")])


def test_cpu_fp8_plugin_computes_what_torchs_own_scaled_mm_computes():
    """The bench-only plugin's kernel against torch's CPU _scaled_mm (exact but ~1000x slower) on the operands
    ComfyUI's fp8 linear gives it: clamped activations cast to e4m3, e4m3 weights, tensor-wise scales, a bias."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cpu_fp8_plugin", CPU_FP8_PLUGIN / "__init__.py")
    torch_kernel = torch._scaled_mm
    plugin = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(plugin)
        assert torch._scaled_mm is plugin.scaled_mm_on_cpu          # what the server's import does
        assert plugin.FIRST_CALL == FP8_FIRST_CALL                   # the log line bench.quality looks for
    finally:
        torch._scaled_mm = torch_kernel                              # this test process keeps torch's own
    g = torch.Generator().manual_seed(0)
    a = (torch.randn(24, 64, generator=g) * 40).clamp(-448, 448).to(torch.float8_e4m3fn)
    b = (torch.randn(16, 64, generator=g) * 0.05).to(torch.float8_e4m3fn)
    scale_a, scale_b, bias = torch.ones(()), torch.tensor(0.5), torch.randn(16, generator=g)
    for out_dtype, kw in ((torch.float32, {"bias": bias}), (torch.bfloat16, {})):
        want = torch_kernel(a, b.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype, **kw)
        got = plugin.scaled_mm_on_cpu(a, b.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype, **kw)
        assert got.dtype == out_dtype and float(want.float().abs().max()) > 1
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
    with pytest.raises(NotImplementedError, match="scale_result"):
        plugin.scaled_mm_on_cpu(a, b.t(), scale_a=scale_a, scale_b=scale_b, scale_result=torch.ones(()))
