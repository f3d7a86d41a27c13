"""Extra tokens and frames of each Wan variant, through the real server with a tiny random model of that type
loaded by stock UNETLoader and conditioned by its stock node: VACE's reference frame, Animate's reference +
continue_motion frames, Phantom's subject frames, ref_conv tokens (Wan 2.2 Fun). Each run is ``strict`` (a
grid whose token count disagrees with the model's self-attention would stop it), the grid's offsets are
those of the stock node, the region tokens sit on the skeleton where that node put the control video, and
the sampled latent equals the brute-force masked reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from iasa.harness.demo import saved_files
from iasa.pose.keypoints import to_pose_keypoint
from iasa.pose.pose_files import write_pose_file

from .conftest import TINY_WAN
from .test_sparse_alignment import POSE_FILE, coverage, wide_moving_pose

SIZE, LENGTH = 128, 25
# Animate's 3 global frames of 8 (reference + 2 continue-motion) and Phantom's 2 of 9 cost more than dense
# attention on 8x8-token frames (the node refuses that); 16x16-token frames leave room for sparsity.
SIZES = {"animate": 256, "phantom": 256}


def random_weights(model: torch.nn.Module, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def build_models(folder) -> dict[str, str]:
    """Tiny random models of each type, in the layouts stock UNETLoader detects (dim 128: one head)."""
    from iasa.training.comfy_env import ensure_comfy_on_path

    ensure_comfy_on_path(cpu=True)
    import comfy.ops
    from comfy.ldm.wan.model import VaceWanModel
    from comfy.ldm.wan.model_animate import AnimateWanModel

    from iasa.training.tiny_wan import TeacherConfig, build_teacher

    ops = dict(operations=comfy.ops.disable_weight_init, dtype=torch.float32)
    models = {
        "vace": VaceWanModel(dim=128, ffn_dim=256, num_heads=1, num_layers=2, in_dim=16, out_dim=16, vace_layers=1,
                             vace_in_dim=96, **ops),
        # 5 layers: the face adapter (one fuser block per 5 layers) is how ComfyUI detects Animate.
        "animate": AnimateWanModel(dim=128, ffn_dim=256, num_heads=1, num_layers=5, in_dim=36, out_dim=16, **ops),
        "ref_conv": build_teacher(TeacherConfig(dim=128, num_layers=1, ffn_dim=256, ref_conv=True), seed=0),
    }
    names = {}
    for i, (kind, model) in enumerate(models.items()):
        names[kind] = f"iasa_test_{kind}_wan.safetensors"
        save_file(random_weights(model, seed=i), str(folder / names[kind]))
    names["phantom"] = TINY_WAN
    return names


@pytest.fixture(scope="module")
def models(server):
    folder = server.base / "models" / "diffusion_models"
    folder.mkdir(parents=True, exist_ok=True)
    write_pose_file(server.base / "input" / POSE_FILE, to_pose_keypoint(wide_moving_pose()))
    return build_models(folder)


def conditioner(kind: str) -> tuple[dict, int]:
    """The stock node of ``kind`` (node "5") and the index of its latent output."""
    size = SIZES.get(kind, SIZE)
    common = {"positive": ["4", 0], "negative": ["4", 0], "vae": ["3", 0], "width": size, "height": size,
              "length": LENGTH, "batch_size": 1}
    if kind == "vace":
        return {"class_type": "WanVaceToVideo", "inputs": {**common, "strength": 1.0, "control_video": ["2", 0],
                                                           "reference_image": ["12", 0]}}, 2
    if kind == "animate":
        return {"class_type": "WanAnimateToVideo", "inputs": {
            **common, "reference_image": ["12", 0], "pose_video": ["2", 0], "continue_motion": ["2", 0],
            "continue_motion_max_frames": 5, "video_frame_offset": 0}}, 2
    if kind == "phantom":
        return {"class_type": "WanPhantomSubjectToVideo", "inputs": {**common, "images": ["13", 0]}}, 3
    return {"class_type": "Wan22FunControlToVideo", "inputs": {**common, "ref_image": ["12", 0],
                                                               "control_video": ["2", 0]}}, 2


def prompt(kind: str, model_file: str, sparse: bool, prefix: str) -> dict:
    node, latent = conditioner(kind)
    attention = ({"class_type": "IASASparseAttention", "inputs": {
        "model": ["6", 0], "pose": ["1", 0], "top_k": 2, "direction": "causal", "face": True, "hands": True,
        "arms": True, "torso": True, "block_size": 16, "dense_blocks": 0, "dense_steps": 0, "kernel": "sdpa",
        "strict": True, "conditioning": ["5", 0]}} if sparse else
        {"class_type": "IASATestMaskedReference", "inputs": {"model": ["6", 0], "pose": ["1", 0], "top_k": 2,
                                                             "direction": "causal"}})
    g = {
        "1": {"class_type": "IASALoadPose", "inputs": {"pose_file": POSE_FILE, "canvas_width": 0, "canvas_height": 0}},
        "2": {"class_type": "IASARenderPose", "inputs": {"pose": ["1", 0], "width": 0, "height": 0, "body": True,
                                                         "face": True, "hands": True}},
        "3": {"class_type": "IASATestPixelVAE", "inputs": {}},
        "4": {"class_type": "IASAEmptyConditioning", "inputs": {"tokens": 8, "width": 4096}},
        "5": node,
        "6": {"class_type": "UNETLoader", "inputs": {"unet_name": model_file, "weight_dtype": "default"}},
        "7": attention,
        "8": {"class_type": "IASATestCaptureLayout", "inputs": {"model": ["7", 0]}},
        "9": {"class_type": "KSampler", "inputs": {"model": ["8", 0] if sparse else ["7", 0], "seed": 0, "steps": 1,
                                                   "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
                                                   "positive": ["5", 0], "negative": ["5", 1],
                                                   "latent_image": ["5", latent], "denoise": 1.0}},
        "12": {"class_type": "LoadImage", "inputs": {"image": "reference.jpg"}},
        "13": {"class_type": "RepeatImageBatch", "inputs": {"image": ["12", 0], "amount": 2}},
        "14": {"class_type": "SaveLatent", "inputs": {"samples": ["9", 0], "filename_prefix": prefix}},
    }
    if sparse:
        g["10"] = {"class_type": "IASATestReadCapture", "inputs": {"latent": ["9", 0]}}
    else:
        del g["8"]
    return g


# (expected offsets, the capture source holding the control video, its frames that show pose-driven frames)
EXPECTED = {
    "vace": ({"leading_ref_frames": 1, "continued_frames": 0, "video_frames": 7, "ref_tokens_before": 0,
              "extra_frames_after": 0}, "vace", slice(1, None)),
    "animate": ({"leading_ref_frames": 3, "continued_frames": 2, "video_frames": 5, "ref_tokens_before": 0,
                 "extra_frames_after": 0}, "pose", slice(2, None)),
    "phantom": ({"leading_ref_frames": 0, "continued_frames": 0, "video_frames": 7, "ref_tokens_before": 0,
                 "extra_frames_after": 2}, None, None),
    "ref_conv": ({"leading_ref_frames": 0, "continued_frames": 0, "video_frames": 7, "ref_tokens_before": 64,
                  "extra_frames_after": 0}, "c_concat", slice(0, None)),
}


def saved_latent(client, result) -> torch.Tensor:
    f = next(f for f in saved_files(result.outputs) if f["filename"].endswith(".latent"))
    return load_safetensors(client.view(f["filename"], f.get("subfolder", ""), "output"))["latent_tensor"].float()


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_offsets_of_each_wan_variant(client, models, kind):
    offsets, source, frames = EXPECTED[kind]
    sparse = client.run(prompt(kind, models[kind], True, f"iasa_test/offsets_{kind}"), timeout=900)
    assert sparse.status == "success", (sparse.error or {}).get("exception_message")
    cap = sparse.outputs["10"]["capture"][0]
    got = {k: cap["offsets"][k] for k in offsets}
    assert got == offsets, cap["grid"]
    labels = np.array(cap["labels"]) > 0
    if source is not None:
        skeleton = np.array(cap["sources"][source])[frames] > 0.02
        assert skeleton.shape == labels.shape and skeleton.sum() > 30, (skeleton.shape, labels.shape)
        recall, precision = coverage(labels, skeleton)
        assert recall > 0.95 and precision > 0.6, (kind, recall, precision)
    reference = client.run(prompt(kind, models[kind], False, f"iasa_test/offsets_{kind}_ref"), timeout=900)
    assert reference.status == "success", (reference.error or {}).get("exception_message")
    a, b = saved_latent(client, sparse), saved_latent(client, reference)
    assert a.shape == b.shape and (a - b).abs().max() < 1e-3 * b.abs().mean() + 1e-4
