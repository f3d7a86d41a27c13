"""IASA Long Video without a server: window plans, weights, per-window slicing, the wrapper against fake
models (a per-frame function, a call counter), and, on a tiny real Wan through ComfyUI's own wrapper
machinery, the composition with IASA Sparse Attention in both node orders."""
from __future__ import annotations

import types

import pytest
import torch

from iasa.sampling.long_video import (FUSE_MODES, LongVideoConfig, LongVideoPatch, LongVideoWindow, WindowPlan,
                                      fuse_windows, latent_frames, pixel_frames, plan_windows, put_first,
                                      slice_conditions, window_weights)

from .stock_wan import apply_model_once, tiny_wan  # noqa: F401  (fixture)
from .torch_threads import one_thread  # noqa: F401  (autouse fixture)


# ------------------------------------------------------------------------------------------ inputs
def test_pixel_frames_convert_to_latent_frames():
    assert latent_frames(49) == 13 and latent_frames(81) == 21 and latent_frames(1) == 1
    cfg = LongVideoConfig.from_pixel_frames(49, 16)
    assert (cfg.window, cfg.overlap, cfg.fuse) == (13, 4, "ramp")
    assert LongVideoConfig.from_pixel_frames(49, 13).overlap == 4      # rounded up to whole latent frames
    assert LongVideoConfig.from_pixel_frames(49, 0).overlap == 0


@pytest.mark.parametrize("window, overlap, words", [
    (50, 16, ["window_frames", "50", "1 + 4k", "49", "53"]),
    (48, 16, ["window_frames", "45", "49"]),
    (49, 49, ["overlap_frames", "smaller than window_frames", "48"]),
    (49, 60, ["overlap_frames", "smaller than window_frames"]),
    (9, 9, ["overlap_frames", "smaller than window_frames", "at most 8"]),
    (49, -4, ["overlap_frames", ">= 0"]),
])
def test_bad_inputs_name_the_input_and_the_fix(window, overlap, words):
    with pytest.raises(ValueError) as exc:
        LongVideoConfig.from_pixel_frames(window, overlap)
    for w in words:
        assert w in str(exc.value), str(exc.value)
    with pytest.raises(ValueError, match="fuse"):
        LongVideoConfig(13, 4, "average")


# ---------------------------------------------------------------------------------------- planning
@pytest.mark.parametrize("total, window, overlap", [
    (13, 13, 4), (14, 13, 4), (37, 13, 4), (39, 13, 4), (100, 13, 4), (9, 3, 1), (10, 3, 2), (25, 13, 0),
    (30, 7, 5), (5, 13, 4),
])
def test_window_plan_covers_every_frame_with_windows_of_the_trained_length(total, window, overlap):
    windows = plan_windows(total, window, overlap)
    covered = sorted({f for w in windows for f in w})
    assert covered == list(range(total))
    if total <= window:
        assert windows == [range(total)]
        return
    assert all(len(w) == window for w in windows)
    assert windows[0].start == 0 and windows[-1].stop == total          # the last window ends at the end
    starts = [w.start for w in windows]
    assert starts == sorted(set(starts))
    for a, b in zip(windows, windows[1:]):
        assert a.stop - b.start >= overlap                               # neighbours share >= overlap frames
    assert all(b - a == window - overlap for a, b in zip(starts[:-2], starts[1:-1]))


def test_window_plan_example():
    assert plan_windows(37, 13, 4) == [range(0, 13), range(9, 22), range(18, 31), range(24, 37)]
    assert plan_windows(9, 3, 1) == [range(0, 3), range(2, 5), range(4, 7), range(6, 9)]


@pytest.mark.parametrize("mode", FUSE_MODES)
@pytest.mark.parametrize("total, window, overlap", [(37, 13, 4), (9, 3, 1), (30, 7, 5), (14, 13, 4), (25, 13, 0)])
def test_weights_sum_to_one_per_frame_and_are_never_zero(mode, total, window, overlap):
    windows = plan_windows(total, window, overlap)
    weights = window_weights(windows, total, mode)
    acc = torch.zeros(total, dtype=torch.float64)
    for w, wt in zip(windows, weights):
        assert wt.shape == (len(w),) and (wt > 0).all()
        acc[w.start:w.stop] += wt
    torch.testing.assert_close(acc, torch.ones(total, dtype=torch.float64), atol=1e-12, rtol=0)


def test_ramp_is_linear_over_the_overlap_and_one_elsewhere():
    windows = plan_windows(37, 13, 4)
    weights = window_weights(windows, 37, "ramp")
    count = torch.zeros(37)
    for w in windows:
        count[w.start:w.stop] += 1
    for w, wt in zip(windows, weights):
        for j, f in enumerate(w):
            if count[f] == 1:
                assert wt[j] == 1.0                                      # only one window: its own output
    # Two windows sharing frames 9..12: a linear crossfade, 1/5 .. 4/5 for the window coming in.
    torch.testing.assert_close(weights[1][:4], torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64))
    torch.testing.assert_close(weights[0][-4:], torch.tensor([0.8, 0.6, 0.4, 0.2], dtype=torch.float64))
    # The end-aligned last window overlaps 7 frames: it ramps over all 7.
    torch.testing.assert_close(weights[3][:7], torch.arange(1, 8, dtype=torch.float64) / 8)


def test_fuse_of_identical_windows_gives_the_clip_back():
    plan = WindowPlan.build(9, LongVideoConfig(3, 1))
    clip = torch.randn(2, 4, 9, 3, 5, generator=torch.Generator().manual_seed(0))
    outs = [clip[:, :, w.start:w.stop] for w in plan.windows]
    torch.testing.assert_close(fuse_windows(outs, plan), clip)


# ----------------------------------------------------------------------------------------- slicing
def test_a_windows_conditions_are_its_frames_and_the_reference_stays_whole():
    g = torch.Generator().manual_seed(1)
    concat = torch.randn(2, 32, 9, 4, 4, generator=g)
    ref = torch.randn(2, 16, 4, 4, generator=g)                  # ref_conv reference: [B, 16, h, w]
    phantom = torch.randn(2, 16, 9, 4, 4, generator=g)           # reference frames, even with the same T
    mask = torch.rand(2, 1, 9, 4, 4, generator=g)
    vace = torch.randn(2, 1, 96, 9, 4, 4, generator=g)
    other_t = torch.randn(2, 16, 5, 4, 4, generator=g)
    kwargs = {"reference_latent": ref, "time_dim_concat": phantom, "denoise_mask": mask, "vace_context": vace,
              "something": other_t, "clip_fea": None, "flag": 3}
    frames = range(4, 7)
    c, kw, sliced, whole = slice_conditions(concat, kwargs, frames, x_t=9)
    assert torch.equal(c, concat[:, :, 4:7])
    assert kw["reference_latent"] is ref and kw["time_dim_concat"] is phantom and kw["something"] is other_t
    assert torch.equal(kw["denoise_mask"], mask[:, :, 4:7])
    assert torch.equal(kw["vace_context"], vace[:, :, :, 4:7])
    assert kw["clip_fea"] is None and kw["flag"] == 3
    assert set(sliced) == {"c_concat", "denoise_mask", "vace_context"}
    assert set(whole) == {"time_dim_concat", "something"}


def test_animate_keeps_its_reference_frame_in_every_window():
    """Wan-Animate: x = [reference frame, video frames]; pose latents and face pixels have no reference."""
    g = torch.Generator().manual_seed(2)
    video_t = 9
    concat = torch.randn(1, 20, 1 + video_t, 4, 4, generator=g)
    pose = torch.randn(1, 16, video_t, 4, 4, generator=g)
    face = torch.randn(1, 3, (video_t - 1) * 4 + 1, 8, 8, generator=g)
    frames = range(4, 7)
    c, kw, sliced, _ = slice_conditions(concat, {"pose_latents": pose, "face_pixel_values": face}, frames,
                                        x_t=1 + video_t, leading=1)
    assert torch.equal(c, concat[:, :, [0, 5, 6, 7]])
    assert torch.equal(kw["pose_latents"], pose[:, :, 4:7])
    assert torch.equal(kw["face_pixel_values"], face[:, :, 16:25])   # pixel frames 4a .. 4b: a clip of 3 latents
    assert pixel_frames(range(0, 3)) == range(0, 9)
    assert set(sliced) == {"c_concat", "pose_latents", "face_pixel_values"}


# ----------------------------------------------------------------------------------------- wrapper
class FakeExecutor:
    """Stands in for ComfyUI's WrapperExecutor: calls ``fn`` (the rest of the chain) and records the calls."""

    def __init__(self, fn, model_name="WanModel"):
        self.fn = fn
        self.calls: list[dict] = []
        self.class_obj = types.SimpleNamespace(diffusion_model=type(model_name, (), {})())

    def __call__(self, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        self.calls.append({"x": x, "c_concat": c_concat, "to": transformer_options, "kwargs": kwargs})
        return self.fn(x, t, c_concat, kwargs)


def per_frame_flow_model(x, t, c_concat, kwargs):
    """denoised = x - sigma * v with v a per-frame function of x, the concat and the (global) reference."""
    v = torch.tanh(x * 1.3 + c_concat[:, :4] - 0.5 * c_concat[:, 4:]) + kwargs["reference_latent"].mean()
    return x - t.view(-1, 1, 1, 1, 1) * v


def inputs(t_frames=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, t_frames, 3, 5, generator=g)
    concat = torch.randn(2, 8, t_frames, 3, 5, generator=g)
    ref = torch.randn(2, 4, 3, 5, generator=g)
    return x, torch.tensor([0.7, 0.7]), concat, ref


def run(patch, executor, x, t, concat, ref, to=None):
    return patch.apply_model_wrapper(executor, x, t, concat, None, None, to or {"sigmas": t}, reference_latent=ref)


@pytest.mark.parametrize("mode", FUSE_MODES)
def test_a_per_frame_model_gives_the_same_output_windowed_and_whole(mode):
    x, t, concat, ref = inputs()
    whole = per_frame_flow_model(x, t, concat, {"reference_latent": ref})
    patch = LongVideoPatch(LongVideoConfig.from_pixel_frames(49, 16, mode))
    ex = FakeExecutor(per_frame_flow_model)
    out = run(patch, ex, x, t, concat, ref)
    torch.testing.assert_close(out, whole, atol=1e-6, rtol=1e-6)
    assert len(ex.calls) == 4                                   # 37 latent frames = 4 windows of 13


def test_a_counting_model_shows_one_call_per_window_with_its_frames():
    x, t, concat, ref = inputs()
    patch = LongVideoPatch(LongVideoConfig.from_pixel_frames(49, 16))
    ex = FakeExecutor(per_frame_flow_model)
    run(patch, ex, x, t, concat, ref, to={"sigmas": t, "keep": 1})
    run(patch, ex, x, t, concat, ref)
    plan = patch.plan(37)
    assert len(ex.calls) == 2 * len(plan) == 8
    assert dict(patch.stats) == {"calls": 2, "windowed_calls": 2, "window_calls": 8}
    for call, frames in zip(ex.calls, plan.windows):
        window = call["to"]["context_window"]
        assert isinstance(window, LongVideoWindow)
        assert window.index_list == tuple(frames) and window.total_frames == 37 and window.context_length == 13
        assert call["to"]["keep"] == 1
        assert torch.equal(call["x"], x[:, :, frames.start:frames.stop])
        assert torch.equal(call["c_concat"], concat[:, :, frames.start:frames.stop])
        assert call["kwargs"]["reference_latent"] is ref          # the same reference tokens in every window


def test_clips_no_longer_than_a_window_run_unchanged():
    x, t, concat, ref = inputs(13)
    patch = LongVideoPatch(LongVideoConfig.from_pixel_frames(49, 16))
    sentinel = torch.zeros(1)
    ex = FakeExecutor(lambda *a: sentinel)
    to = {"sigmas": t}
    assert run(patch, ex, x, t, concat, ref, to) is sentinel
    assert len(ex.calls) == 1 and ex.calls[0]["x"] is x and ex.calls[0]["c_concat"] is concat
    assert ex.calls[0]["to"] is to and "context_window" not in to
    assert patch.stats["whole_calls"] == 1 and patch.stats["window_calls"] == 0
    image = torch.randn(1, 4, 8, 8)                               # image latents: no time axis
    assert run(patch, ex, image, t, None, ref) is sentinel


def test_animate_windows_keep_the_reference_frame():
    x, t, _, ref = inputs(1 + 20)
    concat = torch.randn(2, 8, 21, 3, 5)
    patch = LongVideoPatch(LongVideoConfig(9, 3))
    ex = FakeExecutor(per_frame_flow_model, model_name="AnimateWanModel")
    out = run(patch, ex, x, t, concat, ref)
    whole = per_frame_flow_model(x, t, concat, {"reference_latent": ref})
    torch.testing.assert_close(out, whole, atol=1e-6, rtol=1e-6)
    plan = patch.plan(20)
    assert [c["to"]["context_window"].index_list for c in ex.calls] == [tuple(w) for w in plan.windows]
    for call, frames in zip(ex.calls, plan.windows):
        assert call["x"].shape[2] == 10 and torch.equal(call["x"][:, :, 0], x[:, :, 0])


def test_sparse_attention_fits_its_pose_to_the_whole_clip_in_a_window():
    from iasa.attention.patch import CALL_KEY, SparseAttentionPatch
    from iasa.attention.pose_layout import SparseAttentionConfig

    from iasa.pose.synthetic import talking_pose

    sparse = SparseAttentionPatch(talking_pose(33, 64, 64), SparseAttentionConfig(top_k=1, block_size=4), kernel="sdpa")
    seen = []
    ex = FakeExecutor(lambda *a: None)
    ex.class_obj.diffusion_model = types.SimpleNamespace(patch_size=(1, 2, 2), ref_conv=None)
    x = torch.zeros(1, 16, 3, 8, 8)
    window = LongVideoWindow((4, 5, 6), 9, 2, 4)
    ex.fn = lambda x, t, c, kw: seen.append(ex.calls[-1]["to"][CALL_KEY])
    sparse.apply_model_wrapper(ex, x, torch.ones(1), None, None, None, {"context_window": window})
    call = seen[0]
    assert call.latent_frames == (4, 5, 6) and call.total_frames == 9 and call.grid.video_frames == 3
    stock = types.SimpleNamespace(index_list=[4, 5, 6])        # ComfyUI's own windows carry no total
    sparse.apply_model_wrapper(ex, x, torch.ones(1), None, None, None, {"context_window": stock})
    assert seen[1].total_frames is None


def test_put_first_makes_the_window_wrapper_outermost_and_replaces_an_earlier_one():
    first, second = LongVideoPatch(LongVideoConfig(3, 1)), LongVideoPatch(LongVideoConfig(5, 1))

    def sparse(*a):
        pass

    def other(*a):
        pass

    wrappers = {"apply_model": {"other_pack": [other], "iasa": [sparse]}}
    put_first(wrappers, "apply_model", first.apply_model_wrapper)
    assert list(wrappers["apply_model"]) == ["iasa", "other_pack"]
    assert wrappers["apply_model"]["iasa"] == [first.apply_model_wrapper, sparse]
    put_first(wrappers, "apply_model", second.apply_model_wrapper)
    assert wrappers["apply_model"]["iasa"] == [second.apply_model_wrapper, sparse]


# ----------------------------------------------------------------- real ComfyUI: both node orders


def test_long_video_and_sparse_attention_compose_in_either_order(tiny_wan):
    from iasa.attention.patch import SparseAttentionPatch, apply_sparse_attention
    from iasa.attention.pose_layout import SparseAttentionConfig
    from iasa.sampling.long_video import apply_long_video

    from iasa.pose.synthetic import talking_pose

    # 65 pixel frames = 17 latent frames of 8 x 8 tokens, windows of 9 latent frames: large enough that the
    # sparse kernel is cheaper than dense (IASA Sparse Attention refuses block sizes that are not)
    pose = talking_pose(65, 128, 128, seed=3)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 16, 17, 16, 16, generator=g)
    concat = torch.randn(1, 32, 17, 16, 16, generator=g)
    ref = torch.randn(1, 16, 16, 16, generator=g)
    sigma = torch.tensor([0.8])

    def patches():
        return (LongVideoPatch(LongVideoConfig.from_pixel_frames(33, 8)),
                SparseAttentionPatch(pose, SparseAttentionConfig(top_k=1, block_size=16), kernel="sdpa"))

    outs, stats = {}, {}
    for order in ("sparse_then_long", "long_then_sparse"):
        long_p, sparse_p = patches()
        if order == "sparse_then_long":
            m = apply_long_video(apply_sparse_attention(tiny_wan, sparse_p), long_p)
        else:
            m = apply_sparse_attention(apply_long_video(tiny_wan, long_p), sparse_p)
        import comfy.patcher_extension

        chain = comfy.patcher_extension.get_all_wrappers("apply_model", {"wrappers": m.wrappers})
        assert chain[0] == long_p.apply_model_wrapper and chain[1] == sparse_p.apply_model_wrapper
        outs[order] = apply_model_once(m, x, sigma, concat, ref)
        stats[order] = (dict(long_p.stats), dict(sparse_p.stats))
    assert torch.equal(outs["sparse_then_long"], outs["long_then_sparse"])
    long_stats, sparse_stats = stats["long_then_sparse"]
    n = len(patches()[0].plan(17).windows)
    assert n >= 2
    assert long_stats == {"calls": 1, "windowed_calls": 1, "window_calls": n}
    assert sparse_stats["sparse"] == n * 2                     # every window's self-attention, both layers
    assert sparse_stats["layouts_built"] == n                  # one layout per window
    assert sparse_stats.get("dense_cross_attention", 0) == n * 2   # cross-attention only
    # The windows really are sparse and windowed: different from the whole clip, dense or sparse.
    dense_whole = apply_model_once(tiny_wan, x, sigma, concat, ref)
    assert dense_whole.shape == outs["long_then_sparse"].shape == (1, 16, 17, 16, 16)
    assert (dense_whole - outs["long_then_sparse"]).abs().mean() > 1e-4
    long_only = apply_model_once(apply_long_video(tiny_wan, patches()[0]), x, sigma, concat, ref)
    assert (long_only - outs["long_then_sparse"]).abs().mean() > 1e-5
