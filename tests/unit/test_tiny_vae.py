"""The IASA-mini tiny autoencoder (taew2_1 layout): same keys and numbers as ComfyUI 0.3.75's TAEHV, stock
VAELoader round trip with the latent scaling it picks, Wan's 1 + 4k frame rule, causality, the latent-preview
path through ComfyUI's own previewer, and the distillation trainer (loss goes down, export, resume).
Random weights, 16-32 px, CPU."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from iasa.training.tiny_vae import (PREVIEW_FILE, PREVIEW_PREFIX, VAE_FILE, build_tiny_vae, check_state_dict,
                                    fold_encoder_affine, latent_frames, load_tiny_vae, pixel_frames, save_tiny_vae)
from iasa.training.tiny_wan import ModelFileError, VAEConfig, build_vae, save_model
from .torch_threads import one_thread  # noqa: F401  (autouse fixture)


@pytest.fixture(scope="module")
def comfy():
    from iasa.training.comfy_env import ensure_comfy_on_path

    ensure_comfy_on_path()
    import comfy.latent_formats
    import comfy.sd
    import comfy.taesd.taehv
    import comfy.utils

    return comfy


@pytest.fixture(scope="module")
def tae():
    """Random non-trivial weights everywhere (the zero-initialised block outputs too)."""
    model = build_tiny_vae(seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model.eval()


def _pixels(t: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, t, size, size, generator=torch.Generator().manual_seed(seed))


def _latents(f: int, size: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 16, f, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------- layout, rules
def test_same_keys_shapes_and_numbers_as_comfyui_taehv(comfy, tae):
    stock = comfy.taesd.taehv.TAEHV(latent_channels=16, show_progress_bar=False)
    ours, theirs = tae.state_dict(), stock.state_dict()
    assert set(ours) == set(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    assert 11e6 < sum(v.numel() for v in ours.values()) < 12e6
    stock.load_state_dict(ours)
    x, z = _pixels(9), _latents(3)
    with torch.no_grad():
        for parallel in (False, True):      # ComfyUI's default is frame by frame
            stock.parallel = parallel
            torch.testing.assert_close(stock.encode(x), tae.encode(x), atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(stock.decode(z), tae.decode(z), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_wan_frame_rule_1_plus_4k(tae, k):
    with torch.no_grad():
        lat = tae.encode(_pixels(1 + 4 * k))
        assert lat.shape == (1, 16, k + 1, 2, 2)
        assert tae.decode(lat).shape == (1, 3, 1 + 4 * k, 16, 16)
    assert latent_frames(1 + 4 * k) == k + 1 and pixel_frames(k + 1) == 1 + 4 * k


def test_frame_counts_that_are_not_1_plus_4k_round_up_like_comfyui(tae):
    with torch.no_grad():
        assert tae.encode(_pixels(6)).shape[2] == 2 == latent_frames(6)   # padded with the last frame
    for bad in (0, -3):
        with pytest.raises(ValueError):
            latent_frames(bad)
    with pytest.raises(ValueError):
        pixel_frames(0)


def test_both_halves_are_causal_in_time(tae):
    z = _latents(4)
    z2 = z.clone()
    z2[:, :, 2] += 1.0                     # latent frame 2 decodes to pixel frames 5..8
    x = _pixels(13)
    x2 = x.clone()
    x2[:, :, 8] = 1 - x2[:, :, 8]          # pixel frame 8 is in latent frame 2 (pixels 8..11 after TAEHV's pooling)
    with torch.no_grad():
        a, b = tae.decode(z), tae.decode(z2)
        ea, eb = tae.encode(x), tae.encode(x2)
    diff = (a - b).abs().amax(dim=(0, 1, 3, 4))
    assert torch.all(diff[:5] == 0) and torch.all(diff[5:] > 0)
    ediff = (ea - eb).abs().amax(dim=(0, 1, 3, 4))
    assert torch.all(ediff[:2] == 0) and torch.all(ediff[2:] > 0)


def test_fold_encoder_affine_gives_scale_times_z_plus_shift(tae):
    g = torch.Generator().manual_seed(3)
    scale, shift = torch.rand(16, generator=g) + 0.5, torch.randn(16, generator=g)
    x = _pixels(5)
    folded = build_tiny_vae(init=False)
    folded.load_state_dict(tae.state_dict())
    fold_encoder_affine(folded, scale, shift)
    with torch.no_grad():
        want = tae.encode(x) * scale.view(1, -1, 1, 1, 1) + shift.view(1, -1, 1, 1, 1)
        torch.testing.assert_close(folded.encode(x), want, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(folded.decode(_latents(2)), tae.decode(_latents(2)))   # decoder untouched
    with pytest.raises(ValueError, match="16 scales"):
        fold_encoder_affine(folded, torch.ones(3), torch.zeros(3))


# ------------------------------------------------------------------------------ stock ComfyUI loading
def test_stock_vae_loader_reads_our_file_without_latent_scaling(comfy, tae, tmp_path):
    path = save_tiny_vae(tae, tmp_path / VAE_FILE, {"name": "test"}, dtype=torch.float32)
    sd = comfy.utils.load_torch_file(str(path))
    stock = comfy.sd.VAE(sd=dict(sd))
    assert isinstance(stock.first_stage_model, comfy.taesd.taehv.TAEHV)
    assert stock.first_stage_model.latent_format is None            # raw latents in, raw latents out
    assert stock.latent_channels == 16
    assert stock.spacial_compression_encode() == 8 and stock.temporal_compression_decode() == 4
    images = _pixels(9, 32)[0].permute(1, 2, 3, 0).contiguous()     # IMAGE [T, H, W, 3], 0..1
    lat = stock.encode(images)
    with torch.no_grad():
        mine = tae.encode(images.permute(3, 0, 1, 2)[None])
    assert lat.shape == (1, 16, 3, 4, 4)
    torch.testing.assert_close(lat, mine, atol=1e-5, rtol=1e-4)
    dec = stock.decode(lat)
    assert dec.shape == (1, 9, 32, 32, 3)
    with torch.no_grad():
        torch.testing.assert_close(dec[0], tae.decode(mine)[0].permute(1, 2, 3, 0), atol=1e-5, rtol=1e-4)
    back, card = load_tiny_vae(path)
    assert card["name"] == "test"
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), tae.state_dict().values()))
    bf = save_tiny_vae(tae, tmp_path / "bf16.safetensors", {})               # the shipped dtype
    stock16 = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(bf)))
    assert stock16.first_stage_model.latent_format is None and stock16.latent_channels == 16


def test_float16_is_refused_because_comfyui_would_scale_it_like_hunyuanvideo(comfy, tae, tmp_path):
    with pytest.raises(ValueError, match="HunyuanVideo"):
        save_tiny_vae(tae, tmp_path / "x.safetensors", {}, dtype=torch.float16)
    fp16 = save_model(tae, tmp_path / "fp16.safetensors", {}, dtype=torch.float16)   # what we refuse to write
    sd = comfy.utils.load_torch_file(str(fp16))
    stock = comfy.sd.VAE(sd=dict(sd))
    assert stock.first_stage_model.latent_format is comfy.latent_formats.HunyuanVideo
    z = _latents(1)
    torch.testing.assert_close(stock.first_stage_model.process_in(z), z * 0.476986)   # decode would rescale
    with pytest.raises(ModelFileError, match="float16"):
        check_state_dict(sd)
    with pytest.raises(ModelFileError, match="float16"):
        load_tiny_vae(fp16)
    wan_vae = save_model(build_vae(VAEConfig(dim=8)), tmp_path / "wan.safetensors", {}, dtype=torch.float32)
    with pytest.raises(ModelFileError, match="not a TAEHV"):
        load_tiny_vae(wan_vae)


# -------------------------------------------------------------------------------------- previews
def _visible(model, rgb: tuple[float, float, float]):
    """A bf16-exact copy with a picture worth comparing: random decoders give ~0 (black after the clamp), so
    the output conv is amplified around a base colour."""
    out = build_tiny_vae(init=False)
    out.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in model.state_dict().items()})
    with torch.no_grad():
        out.decoder[-1].weight.mul_(30.0)
        out.decoder[-1].bias.copy_(torch.tensor(rgb))
    return out.eval()


def test_comfyui_previewer_decodes_normalised_x0_with_the_bundled_file_and_a_users_file_wins(comfy, tae, tmp_path):
    import comfy.cli_args
    import folder_paths
    import latent_preview

    from iasa.nodes.model_folders import register_bundled_model_folders

    root = tmp_path / "pack"
    ours, users = _visible(tae, (0.3, 0.5, 0.7)), _visible(tae, (0.7, 0.5, 0.3))
    save_tiny_vae(ours, root / "models" / "vae_approx" / PREVIEW_FILE, {"name": "preview"})
    saved = {k: (list(v[0]), set(v[1])) for k, v in folder_paths.folder_names_and_paths.items()}
    saved_method = comfy.cli_args.args.preview_method
    x0 = _latents(3, 4, seed=5)

    def expected(model):   # the first latent frame of x0 as it is (no process_out): normalised latents
        with torch.no_grad():
            frame = model.decode(x0[:1, :, :1])[0, :, 0].permute(1, 2, 0)
        return np.asarray(latent_preview.preview_to_image(frame, do_scale=False)).astype(int)

    def shown():
        folder_paths.filename_list_cache.clear()
        previewer = latent_preview.get_previewer("cpu", fmt)
        assert isinstance(previewer, latent_preview.TAEHVPreviewerImpl)
        kind, image, _size = previewer.decode_latent_to_preview_image("JPEG", x0)
        assert kind == "JPEG" and image.size == (32, 32)
        return np.asarray(image).astype(int)

    try:
        folder_paths.folder_names_and_paths["vae_approx"] = ([str(tmp_path / "user")], {".safetensors"})
        register_bundled_model_folders(root, folder_paths)
        comfy.cli_args.args.preview_method = comfy.cli_args.LatentPreviewMethod.TAESD
        fmt = comfy.latent_formats.Wan21()
        assert PREVIEW_FILE.startswith(PREVIEW_PREFIX) and fmt.taesd_decoder_name == PREVIEW_PREFIX
        want_ours, want_users = expected(ours), expected(users)
        assert want_ours.std() > 10 and np.abs(want_ours - want_users).mean() > 20   # a picture; files told apart
        assert np.abs(shown() - want_ours).max() <= 1              # bf16 weights, frame-by-frame vs parallel
        save_tiny_vae(users, tmp_path / "user" / "lighttaew2_1.safetensors", {})
        assert np.abs(shown() - want_users).max() <= 1             # a user's own file sorts first and wins
    finally:
        comfy.cli_args.args.preview_method = saved_method
        folder_paths.folder_names_and_paths.clear()
        folder_paths.folder_names_and_paths.update(saved)
        folder_paths.filename_list_cache.clear()


# -------------------------------------------------------------------------------------- distillation
@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    vae = build_vae(VAEConfig(dim=8), seed=1)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return save_model(vae, tmp_path_factory.mktemp("teacher") / "vae.safetensors", {"name": "test VAE"},
                      dtype=torch.float32)


def test_a_few_distillation_steps_reduce_the_loss(tmp_path, teacher_file):
    import types

    from iasa.training import distributed as D
    from iasa.training.runner import RunConfig, Runner, make_optimizer
    from iasa.training.tiny_vae_train import Distiller, Teacher, distill_losses
    from .test_training import _frames

    x = _frames(1, 5, 16)
    teacher = Teacher(teacher_file, torch.device("cpu"), "none")
    z, y = teacher.targets(x)
    zn = teacher.normalise(z)
    distiller = Distiller(build_tiny_vae(seed=0), build_tiny_vae(seed=1).decoder)
    a = types.SimpleNamespace(enc_weight=1.0, l2_weight=1.0, edge_weight=0.5, preview_weight=0.5)
    cfg = RunConfig(out=str(tmp_path), steps=25, lr=2e-3, warmup=0, min_lr_frac=1.0, checkpoint_every=0,
                    log_every=10 ** 6, resume=False)
    info = D.DistInfo()
    runner = Runner(cfg, info, distiller, distiller, make_optimizer(distiller.parameters(), cfg, info.device),
                    {"data": torch.Generator()}, "tiny_vae")
    parts: list[dict] = []

    def step_fn(step):
        loss, metrics = distill_losses(distiller((x + 1) / 2, z, zn[:, :, :1]), zn, y, teacher, a)
        parts.append({k: float(v) for k, v in metrics.items()})
        return loss, metrics

    runner.run(step_fn)
    for key in ("loss", "enc_mse", "dec_l1", "preview_l1"):
        first, last = np.mean([p[key] for p in parts[:4]]), np.mean([p[key] for p in parts[-4:]])
        assert last < 0.7 * first, (key, first, last)


def _cli(out, teacher_file, *extra):
    from iasa.training.tiny_vae_train import main

    return main(["--data", "procedural:2:5:16", "--vae", str(teacher_file), "--out", str(out), "--frames", "5",
                 "--crop", "16", "--batch", "1", "--steps", "2", "--warmup", "0", "--log-every", "1",
                 "--checkpoint-every", "1", "--eval-clips", "1", "--eval-frames", "5", "--device", "cpu",
                 "--amp", "none", *extra])


def test_trainer_exports_both_files_for_stock_comfyui_and_resumes_exactly(comfy, tmp_path, teacher_file):
    full = _cli(tmp_path / "full", teacher_file)
    _cli(tmp_path / "cut", teacher_file, "--stop-after", "1")
    assert not (tmp_path / "cut" / VAE_FILE).exists()                 # an interruption exports nothing
    resumed = _cli(tmp_path / "cut", teacher_file)
    assert full["step"] == resumed["step"] == 2
    for name in (VAE_FILE, PREVIEW_FILE):
        a, _ = load_tiny_vae(tmp_path / "full" / name)
        b, card = load_tiny_vae(tmp_path / "cut" / name)
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values())), name
        stock = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(tmp_path / "cut" / name)))
        assert stock.first_stage_model.latent_format is None
        assert card["teacher_vae"]["file"] == teacher_file.name and card["trained_steps"] == 2
        assert card["command"] and card["heldout_windows"] == [1, 5]
    held = full["heldout"]
    assert set(held) >= {"decoder_vs_vae", "roundtrip_vs_frames", "encoder_vs_vae", "preview_vs_vae"}
    assert all(np.isfinite(v) for v in held.values())
    assert full["preview_fold_max_abs_error"] < 1e-4
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["heldout"] == held


def test_sampler_previews_see_normalised_x0_and_vae_decode_sees_raw_latents(comfy):
    """Why two files: ComfyUI's sampler callback (the previewer's input) gets x0 in the model's space, while
    the LATENT that VAEDecode gets is ``process_out`` of it."""
    import comfy.sample
    import comfy.samplers

    from iasa.training.tiny_wan import TeacherConfig, build_teacher

    net = build_teacher(TeacherConfig(dim=128, num_layers=1, ffn_dim=256, in_dim=16, ref_conv=False), seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    patcher = comfy.sd.load_diffusion_model_state_dict(net.state_dict())
    seen = []
    noise = torch.randn(1, 16, 2, 4, 4, generator=g)
    cond = [[torch.zeros(1, 4, 4096), {}]]
    sigmas = torch.tensor([1.0, 0.5, 0.0])
    out = comfy.sample.sample_custom(patcher, noise, 1.0, comfy.samplers.sampler_object("euler"), sigmas, cond, cond,
                                     torch.zeros_like(noise), callback=lambda i, x0, x, n: seen.append(x0.clone()),
                                     disable_pbar=True)
    fmt = comfy.latent_formats.Wan21()
    torch.testing.assert_close(fmt.process_out(seen[-1]), out, atol=1e-4, rtol=1e-4)
    assert (seen[-1] - out).abs().max() > 0.1


def test_tiny_vae_mode_node_runs_all_frames_at_once_on_a_copy_with_the_same_pictures(comfy, tae):
    from iasa.nodes.vae_nodes import IASATinyVAEMode

    stock = comfy.sd.VAE(sd={k: v.clone() for k, v in tae.state_dict().items()})
    assert stock.first_stage_model.parallel is False                          # ComfyUI's default
    fast = IASATinyVAEMode.execute(vae=stock, all_frames_at_once=True).args[0]
    assert fast is not stock and fast.first_stage_model.parallel is True and stock.first_stage_model.parallel is False
    assert fast.patcher is stock.patcher                                        # same weights, loaded the ComfyUI way
    assert fast.first_stage_model.decoder[1].weight is stock.first_stage_model.decoder[1].weight
    z = _latents(3)
    torch.testing.assert_close(fast.decode(z), stock.decode(z), atol=1e-5, rtol=1e-4)
    slow = IASATinyVAEMode.execute(vae=fast, all_frames_at_once=False).args[0]
    assert slow.first_stage_model.parallel is False and fast.first_stage_model.parallel is True
    wan = comfy.sd.VAE(sd=build_vae(VAEConfig(dim=8)).state_dict())
    with pytest.raises(ValueError, match="vae: a tiny autoencoder"):
        IASATinyVAEMode.execute(vae=wan, all_frames_at_once=True)
