"""IASA-mini models: shapes, init, latent calibration, stock ComfyUI loading, Fun-Control concat layout,
flow-matching numbers against ComfyUI's own classes. Tiny sizes, CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from iasa.training import flow
from iasa.training.comfy_env import ensure_comfy_on_path
from iasa.training.teacher_data import concat_latent, encode_normalised, model_input
from iasa.training.tiny_wan import (TeacherConfig, VAEConfig, _check_initialised, build_teacher, build_vae,
                                    fold_latent_affine, load_teacher, load_vae, save_model,
                                    teacher_config_from_state_dict)
from iasa.training.vae_train import calibrate, normalised_stats, reconstruct
from .torch_threads import one_thread  # noqa: F401  (autouse fixture)


@pytest.fixture(scope="module")
def comfy():
    ensure_comfy_on_path()
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_sampling
    import comfy.samplers
    import comfy.sd
    import comfy.utils

    return comfy


def _frames(n_clips: int = 2, t: int = 9, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Procedural clips in model range ``[B, 3, T, S, S]``."""
    from iasa.training.clips import to_model_range
    from iasa.training.procedural import make_clip

    px = np.stack([make_clip(seed + i, t, size)["frames"] for i in range(n_clips)])
    return to_model_range(torch.from_numpy(px))


def _perturbed(model: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Random non-zero weights everywhere (a freshly initialised head outputs exact zeros)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


# ------------------------------------------------------------------------------------------- VAE
def test_vae_shapes_roundtrip_and_causality():
    vae = build_vae(VAEConfig(dim=8)).eval()
    x = _frames(1, 9)
    with torch.no_grad():
        z = vae.encode(x)
        y = vae.decode(z)
        z0 = vae.encode(x[:, :, :1])
    assert z.shape == (1, 16, 3, 4, 4)
    assert y.shape == x.shape
    # Causal: the first latent frame is the encoding of the first frame alone (the reference latent).
    assert torch.equal(z[:, :, :1], z0)


def test_init_leaves_no_parameter_uninitialised():
    model = build_teacher(TeacherConfig(dim=128, num_layers=2, ffn_dim=256))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.count_nonzero(model.head.head.weight) == 0
    assert torch.equal(model.blocks[0].norm3.weight, torch.ones(128))
    assert torch.equal(model.blocks[1].self_attn.norm_q.weight, torch.ones(128))
    assert 0.5 / 128 ** 0.5 < float(model.blocks[0].modulation.detach().std()) < 2.0 / 128 ** 0.5
    vae = build_vae(VAEConfig(dim=8))
    assert float(vae.encoder.conv1.weight.detach().std()) > 0
    model.blocks[0].ffn[0].weight.data.fill_(float("nan"))
    with pytest.raises(RuntimeError, match="uninitialised"):
        _check_initialised(model, "test")


def test_configs_reject_shapes_stock_loaders_cannot_read():
    with pytest.raises(ValueError, match="multiple of 128"):
        TeacherConfig(dim=200)
    with pytest.raises(ValueError, match="z_dim"):
        VAEConfig(dim=16, z_dim=8)


def test_calibration_hits_wan21_statistics_and_keeps_reconstruction(comfy):
    vae = _perturbed(build_vae(VAEConfig(dim=8)), 0.02).eval()
    x = _frames(3, 9)
    before = reconstruct(vae, x, batch=3)
    calibrate(vae, x, batch=3)
    mean, std = normalised_stats(vae, x, batch=3)
    assert float(mean.abs().max()) < 1e-4
    assert float((std - 1).abs().max()) < 1e-4
    after = reconstruct(vae, x, batch=3)
    assert float((after - before).abs().max()) < 1e-4
    # The raw latents now carry Wan21's own mean/std (what stock process_in undoes).
    fmt = comfy.latent_formats.Wan21()
    with torch.no_grad():
        raw = vae.encode(x).double()
    raw_mean = raw.transpose(0, 1).reshape(16, -1).mean(1)
    assert torch.allclose(raw_mean, fmt.latents_mean.flatten().double(), atol=1e-3)


def test_fold_latent_affine_rejects_zero_scale():
    vae = build_vae(VAEConfig(dim=8))
    with pytest.raises(ValueError, match="non-zero"):
        fold_latent_affine(vae, torch.zeros(16), torch.zeros(16))


def test_stock_vae_loader_reads_our_file(comfy, tmp_path):
    ours = _perturbed(build_vae(VAEConfig(dim=8)), 0.02).eval()
    path = save_model(ours, tmp_path / "vae.safetensors", {"name": "test"}, dtype=torch.float32)
    sd = comfy.utils.load_torch_file(str(path))
    stock = comfy.sd.VAE(sd=dict(sd))
    import comfy.ldm.wan.vae as wv

    assert isinstance(stock.first_stage_model, wv.WanVAE)
    assert stock.latent_channels == 16 and stock.first_stage_model.dim == 8
    assert set(stock.first_stage_model.state_dict()) == set(sd)
    images = ((_frames(1, 5)[0].permute(1, 2, 3, 0) + 1) / 2).contiguous()  # IMAGE [T, H, W, 3]
    lat = stock.encode(images)
    with torch.no_grad():
        mine = ours.encode(images.permute(3, 0, 1, 2)[None] * 2 - 1)
    assert lat.shape == (1, 16, 2, 4, 4)
    assert torch.allclose(lat, mine, atol=1e-4)
    dec = stock.decode(lat)
    assert dec.shape == (1, 5, 32, 32, 3)
    back, card = load_vae(path)
    assert card["name"] == "test"
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), ours.state_dict().values()))
    # The shipped (bf16) file loads too.
    bf = save_model(ours, tmp_path / "vae_bf16.safetensors", {}, dtype=torch.bfloat16)
    assert comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(bf))).latent_channels == 16


# --------------------------------------------------------------------------------------- teacher
def _tiny_teacher() -> torch.nn.Module:
    return _perturbed(build_teacher(TeacherConfig(dim=128, num_layers=2, ffn_dim=256)), 0.05).eval()


def test_stock_unet_loader_detects_wan21_fun_control_and_matches_forward(comfy, tmp_path):
    ours = _tiny_teacher()
    path = save_model(ours, tmp_path / "teacher.safetensors", {"name": "t"}, dtype=torch.float32)
    sd = comfy.utils.load_torch_file(str(path))
    assert teacher_config_from_state_dict(sd).in_dim == 48
    patcher = comfy.sd.load_diffusion_model_state_dict(dict(sd))
    m = patcher.model
    assert isinstance(m, comfy.model_base.WAN21)
    uc = m.model_config.unet_config
    assert (uc["in_dim"], uc["dim"], uc["num_heads"], uc["num_layers"], uc["model_type"]) == (48, 128, 1, 2, "t2v")
    assert m.diffusion_model.img_emb is None
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 48, 3, 4, 6, generator=g)
    t = torch.tensor([900.0, 250.0])
    ref = torch.randn(2, 16, 4, 6, generator=g)
    assert m.diffusion_model.ref_conv is not None     # ref_conv.weight -> in_dim_ref_conv, as Wan 2.2 Fun
    with torch.no_grad():
        stock = m.diffusion_model(x, t, torch.zeros(2, 512, 4096), reference_latent=ref)
        mine = ours(x, t, torch.zeros(2, 1, 4096), reference_latent=ref)  # a 1-token zero context: same output
        no_ref = ours(x, t, torch.zeros(2, 1, 4096))
    assert stock.shape == (2, 16, 3, 4, 6)
    assert float(stock.abs().mean()) > 1e-3
    assert torch.allclose(stock, mine, atol=1e-5, rtol=1e-4)
    assert float((no_ref - mine).abs().max()) > 1e-3   # the reference tokens reach the output
    # Through the stock apply_model (flow CONST): denoised = x_t - v * sigma, concat after the noise.
    sigma = torch.tensor([0.9, 0.25])
    with torch.no_grad():
        den = m.apply_model(x[:, :16], sigma, c_concat=x[:, 16:], c_crossattn=torch.zeros(2, 512, 4096))
        v = ours(model_input(x[:, :16], x[:, 16:]), flow.model_timestep(sigma), torch.zeros(2, 1, 4096))
    assert torch.allclose(den, flow.denoised(x[:, :16], v, sigma), atol=1e-5, rtol=1e-4)
    back, card = load_teacher(path)
    assert card["name"] == "t" and torch.equal(back.head.modulation, ours.head.modulation)
    bf = save_model(ours, tmp_path / "teacher_bf16.safetensors", {}, dtype=torch.bfloat16)  # the shipped form
    m16 = comfy.sd.load_diffusion_model_state_dict(comfy.utils.load_torch_file(str(bf))).model
    assert isinstance(m16, comfy.model_base.WAN21) and m16.model_config.unet_config["in_dim"] == 48


def test_concat_layout_and_reference_equal_stock_wan22_fun_control(comfy):
    """Our training inputs == stock Wan22FunControlToVideo + WAN21.concat_cond / extra_conds for the same clip:
    concat [control | 0], the reference image as ``reference_latent``; the negative of the shipped workflow
    (ref_image, no control_video) is a zero concat with the same reference."""
    from comfy_extras.nodes_wan import Wan22FunControlToVideo

    from iasa.pose.keypoints import PoseSequence
    from iasa.pose.render import render_pose
    from iasa.training.procedural import make_clip

    ours = _perturbed(build_vae(VAEConfig(dim=8)), 0.02).eval()
    stock_vae = comfy.sd.VAE(sd={k: v.clone() for k, v in ours.state_dict().items()})
    clip = make_clip(5, 9, 32)
    pose = render_pose(PoseSequence(clip["keypoints"], 32, 32))           # float [T, H, W, 3]
    frames = torch.from_numpy(clip["frames"]).float() / 255.0
    cond = [[torch.zeros(1, 1, 4096), {}]]
    ref_frame = frames[3:4]
    pos, _, latent = Wan22FunControlToVideo.execute(cond, cond, stock_vae, 32, 32, 9, 1, ref_image=ref_frame,
                                                    control_video=torch.from_numpy(pose)).args
    neg, _, _ = Wan22FunControlToVideo.execute(cond, cond, stock_vae, 32, 32, 9, 1, ref_image=ref_frame).args
    model = comfy.sd.load_diffusion_model_state_dict(
        {k: v.clone() for k, v in _tiny_teacher().state_dict().items()}).model
    noise = latent["samples"]
    dev = torch.device("cpu")
    stock = model.concat_cond(noise=noise, device=dev, **pos[0][1]).detach()
    empty = model.concat_cond(noise=noise, device=dev, **neg[0][1]).detach()
    ref_pos = model.extra_conds(noise=noise, device=dev, **pos[0][1])["reference_latent"].cond.detach()
    ref_neg = model.extra_conds(noise=noise, device=dev, **neg[0][1])["reference_latent"].cond.detach()
    fmt = comfy.latent_formats.Wan21()
    px = torch.from_numpy(clip["frames"])[None]
    x0 = encode_normalised(ours, px, amp=False, latent_format=fmt)
    ctrl = encode_normalised(ours, torch.from_numpy(np.rint(pose * 255).astype(np.uint8))[None], amp=False,
                             latent_format=fmt)
    ref = encode_normalised(ours, torch.from_numpy(clip["frames"][3:4])[None], amp=False, latent_format=fmt)
    mine = concat_latent(ctrl)
    assert stock.shape == mine.shape == (1, 32, 3, 4, 4)    # the 4-channel concat_mask is dropped for in_dim 48
    assert torch.allclose(stock, mine, atol=1e-4)
    assert float(stock[:, 16:].abs().max()) < 1e-6          # start-image channels stay empty
    assert float(empty.abs().max()) < 1e-5                  # negative branch: zero concat ...
    assert ref_pos.shape == (1, 16, 4, 4)
    assert torch.allclose(ref_pos, ref[:, :, 0], atol=1e-4) and torch.equal(ref_pos, ref_neg)  # ... same reference
    assert float((x0[:, :, 0] - ref_pos).abs().max()) > 1e-3  # a frame other than the window's first


# ------------------------------------------------------------------------------------------ flow
def test_flow_numbers_match_comfyui(comfy):
    ms = comfy.model_sampling
    for shift in (1.0, 3.0, 8.0):
        class Cfg:
            sampling_settings = {"shift": shift}
        sampling = ms.ModelSamplingDiscreteFlow(Cfg)
        assert torch.equal(flow.discrete_sigmas(shift), sampling.sigmas)
        for steps in (1, 4, 25):
            stock = comfy.samplers.calculate_sigmas(sampling, "simple", steps)
            assert torch.allclose(flow.simple_sigmas(shift, steps), stock.float(), atol=0, rtol=0)
    assert torch.allclose(flow.simple_sigmas(8.0, 4), torch.tensor([1.0, 0.96, 0.8889, 0.7273, 0.0]), atol=1e-4)
    const = ms.CONST()
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 16, 2, 4, 4, generator=g), torch.randn(3, 16, 2, 4, 4, generator=g)
    sigma = flow.sample_sigmas(3, 5.0, generator=g)
    x_t = flow.noisy_latent(x0, noise, sigma)
    assert torch.allclose(x_t, const.noise_scaling(sigma, noise, x0), atol=1e-6)
    v = flow.velocity_target(x0, noise)
    assert torch.allclose(const.calculate_denoised(sigma, v, x_t), x0, atol=1e-5)
    assert torch.allclose(flow.denoised(x_t, v, sigma), x0, atol=1e-5)


def test_training_sigmas_follow_the_sampling_shift():
    g = torch.Generator().manual_seed(0)
    s = flow.sample_sigmas(20000, 3.0, generator=g)
    assert float(s.min()) > 0 and float(s.max()) <= 1
    # u = s / (shift - (shift - 1) s) must be uniform: its quartiles sit at .25 / .5 / .75.
    u = s / (3.0 - 2.0 * s)
    q = torch.quantile(u, torch.tensor([0.25, 0.5, 0.75]))
    assert torch.allclose(q, torch.tensor([0.25, 0.5, 0.75]), atol=0.02)
    with pytest.raises(ValueError, match="shift"):
        flow.sample_sigmas(2, 0.0)


def test_euler_sampler_recovers_x0_with_the_exact_velocity():
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 4, 3, generator=g), torch.randn(2, 4, 3, generator=g)
    # For a single data point the exact flow velocity is (x_t - x0) / sigma.
    out = flow.sample_euler(lambda x, s: (x - x0) / s.view(-1, 1, 1), noise, flow.simple_sigmas(3.0, 8))
    assert torch.allclose(out, x0, atol=1e-5)
