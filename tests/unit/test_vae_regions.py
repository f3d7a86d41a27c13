"""Body-region masks in VAE training (training/clips.py, training/vae_train.py): the frame bank crops and flips a
clip's packed region mask exactly as its frames; the region loss and the masked PSNR read the region pixels only;
``--region-weight`` trains end to end and the card reports the held-out PSNR inside the regions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from iasa.pose.regions import frame_masks
from iasa.training.clips import FrameBank, load_clips, region_bits
from iasa.training.vae_train import psnr, recon_losses
from .torch_threads import one_thread  # noqa: F401  (autouse fixture)


def _coded_clip(t: int, h: int, w: int, seed: int) -> dict:
    """Frames whose pixels name their own (clip, frame), row and column, and random region masks."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((t, h, w, 3), np.uint8)
    frames[..., 0] = (seed * 10 + np.arange(t))[:, None, None]
    frames[..., 1] = np.arange(h)[None, :, None]
    frames[..., 2] = np.arange(w)[None, None, :]
    masks = {n: rng.random((t, h, w)) < 0.3 for n in ("face", "lips", "left_hand", "right_hand", "arms", "torso")}
    return {"frames": frames, "masks": masks}


@pytest.mark.parametrize("flip", [False, True])
def test_sampled_region_masks_sit_on_the_sampled_pixels(flip):
    clips = [_coded_clip(7, 20, 28, s) for s in range(3)]     # width 28: not a multiple of 8 (a padded last byte)
    for c in clips:
        c["region_bits"] = region_bits(c, ("face", "right_hand"))
    bank = FrameBank(clips, 5, torch.device("cpu"))
    x, m = bank.sample_with_regions(8, 12, torch.Generator().manual_seed(3), flip=flip)
    same = bank.sample(8, 12, torch.Generator().manual_seed(3), flip=flip)
    torch.testing.assert_close(x, same, rtol=0, atol=0)       # the same draw as sample()
    assert m.shape == (8, 1, 5, 12, 12) and set(m.unique().tolist()) <= {0.0, 1.0}
    px = torch.round((x + 1) * 255 / 2).long().numpy()          # back to the coded (clip, frame), row, column
    flipped = 0
    for b in range(8):
        clip, frames = px[b, 0, 0, 0, 0] // 10, px[b, 0, :, 0, 0] % 10
        rows, cols = px[b, 1, 0, :, 0], px[b, 2, 0, 0, :]
        assert (px[b, 0] // 10 == clip).all()
        flipped += int(cols[0] > cols[-1])
        union = clips[clip]["masks"]["face"] | clips[clip]["masks"]["right_hand"]
        np.testing.assert_array_equal(m[b, 0].numpy().astype(bool), union[frames][:, rows][:, :, cols])
    assert (flipped > 0) == flip


def test_region_windows_cover_the_full_frames_of_windows():
    clips = [_coded_clip(9, 16, 16, s) for s in range(2)]
    for c in clips:
        c["region_bits"] = region_bits(c, ("lips",))
    bank = FrameBank(clips, 9, torch.device("cpu"))
    m = bank.region_windows(2)
    assert m.shape == (2, 1, 9, 16, 16)
    for b in range(2):
        np.testing.assert_array_equal(m[b, 0].numpy().astype(bool), clips[b]["masks"]["lips"])


def test_procedural_clips_get_masks_drawn_from_their_keypoints():
    clips = load_clips("procedural:2:5:64", "train", regions=("face", "left_hand"))
    for c in clips:
        bits = np.unpackbits(c["region_bits"], axis=-1, count=64).astype(bool)
        per = [frame_masks(k, 64, 64) for k in c["keypoints"]]
        want = np.stack([m["face"] | m["left_hand"] for m in per])
        np.testing.assert_array_equal(bits, want)
        assert 0.0 < want.mean() < 0.5


def test_unknown_or_missing_regions_are_refused_by_name():
    clip = _coded_clip(2, 8, 8, 0)
    with pytest.raises(ValueError, match="ears"):
        region_bits(clip, ("face", "ears"))
    with pytest.raises(ValueError, match="load the clips with regions"):
        FrameBank([{"frames": clip["frames"]}], 2, torch.device("cpu")).region_windows(1)


def test_region_loss_and_masked_psnr_read_the_region_pixels_only():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 5, 8, 8, generator=g) * 2 - 1
    rec = x + 0.1 * torch.randn(x.shape, generator=g)
    m = (torch.rand(2, 1, 5, 8, 8, generator=g) < 0.4).float()
    far = rec + 0.5 * (1 - m) * torch.randn(x.shape, generator=g)   # worse outside the regions only
    a, b = recon_losses(rec, x, m), recon_losses(far, x, m)
    torch.testing.assert_close(a["region"], b["region"])
    assert b["l1"] > a["l1"]
    d = rec - x
    want = ((d.abs() + d * d).mean(1, keepdim=True) * m).sum() / m.sum()
    torch.testing.assert_close(a["region"], want)
    assert psnr(rec, x, m) == pytest.approx(psnr(far, x, m), abs=1e-9)
    assert psnr(far, x, m) > psnr(far, x) + 3
    # per clip: 10 log10(1 / MSE over the masked pixels of all channels), mean over clips
    ai, bi = ((rec + 1) / 2).clamp(0, 1), ((x + 1) / 2).clamp(0, 1)
    per = [float(10 * torch.log10(1 / (((ai[i] - bi[i]) ** 2) * m[i]).sum() * (m[i].sum() * 3))) for i in range(2)]
    assert psnr(rec, x, m) == pytest.approx(sum(per) / 2, abs=1e-4)
    assert np.isnan(psnr(rec, x, torch.zeros_like(m)))


def test_vae_train_with_a_region_weight_reports_region_psnr(tmp_path):
    from iasa.training.tiny_wan import read_weights
    from iasa.training.vae_train import main

    common = ["--data", "procedural:4:9:48", "--dim", "8", "--frames", "5", "--crop", "32", "--batch", "2",
              "--log-every", "1", "--eval-clips", "2", "--eval-frames", "9", "--calib-clips", "2", "--device", "cpu",
              "--warmup", "1", "--steps", "2"]
    first = main([*common, "--out", str(tmp_path / "a")])
    out = main([*common, "--out", str(tmp_path / "b"), "--region-weight", "2", "--regions", "face", "left_hand",
                "right_hand", "--init", first["weights"]])
    assert out["step"] == 2 and out["regions"] == ["face", "left_hand", "right_hand"]
    assert np.isfinite(out["heldout_region_psnr"]) and np.isfinite(out["init_heldout_region_psnr"])
    assert out["heldout_region_psnr"] != pytest.approx(out["heldout_psnr_fp32_calibrated"], abs=1e-3)
    card = read_weights(out["weights"])[1]
    assert card["losses"]["region"] == 2.0 and card["metrics"]["heldout_region_psnr"] == out["heldout_region_psnr"]
    log = (tmp_path / "b" / "vae_loss.json").read_text()
    assert '"region"' in log


def test_shard_clips_get_the_union_of_their_stored_masks(tmp_path):
    """From real shards: the union is OR-ed from the stored bit-packed masks (never unpacked for all six regions),
    and equals the union of the unpacked masks."""
    from iasa.pose.keypoints import PoseSequence
    from iasa.pose.regions import MASK_NAMES, sequence_masks
    from iasa.training.synth.character import draw_sequence
    from iasa.training.synth.identity import Identity
    from iasa.training.synth.shards import read_shard, write_shard
    from iasa.training.synth.templates import base_pose

    def clip(cid, seed, n=5, size=40):   # width 40: five packed bytes a row
        ident = Identity.sample(seed)
        kp = np.repeat(base_pose(ident, size).points, n, axis=0)
        kp[:, :, 0] += np.arange(n)[:, None] * 1.5 * (kp[:, :, 2] > 0)
        return dict(id=cid, split="train", frames=draw_sequence(kp, ident, size), keypoints=kp,
                    audio=np.zeros(16000 * n // 25, np.int16), masks=sequence_masks(PoseSequence(kp, size, size)),
                    mask_names=list(MASK_NAMES), fps=25.0, sample_rate=16000)

    path = write_shard(tmp_path / "s0.safetensors", [clip("a", 1), clip("b", 2)])
    regions = ("lips", "left_hand", "right_hand")
    loaded = load_clips(tmp_path, "train", regions=regions)
    assert [c["id"] for c in loaded] == ["a", "b"] and all("packed_masks" not in c for c in loaded)
    for got, full in zip(loaded, read_shard(path)):
        want = np.any([full["masks"][r] for r in regions], axis=0)
        assert want.any()
        np.testing.assert_array_equal(np.unpackbits(got["region_bits"], axis=-1, count=40).astype(bool), want)
