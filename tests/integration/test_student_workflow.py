"""The student talking workflow (workflows/api/iasa_mini_student.json) through the real server, shrunk, with a
random student in the IASA-mini v2 format (the real one comes from scripts/distill_iasa_mini_gpu.sh): 2.2 s of
speech = 55 frames -> 53 frames, two keyed windows of 49 (IASA Keyed Windows), at 128 x 128 (8 x 8 tokens a
frame, where IASA Sparse Attention's kernel is cheaper than dense). The patches' own counters (the testing
pack's IASATestPatchStats) show that every window's self-attention went sparse."""
from __future__ import annotations

import io

import av
import numpy as np
import pytest

from iasa.bench.quality import wan_length
from iasa.harness.demo import STUDENT_WORKFLOW, saved_files
from iasa.sampling.keyed_windows import KeyedWindowPlan

from .test_iasa_mini import _by_type, install_random_mini, install_random_student, shrunk_talking_workflow

STUDENT, TEACHER, VAE = ("iasa_test_wf_student.safetensors", "iasa_test_wf_teacher.safetensors",
                         "iasa_test_wf_vae.safetensors")
SECONDS, SIZE = 2.2, 128
TIMESTEPS = (1000.0, 500.0)             # the random student's card: 2 steps


@pytest.fixture(scope="module")
def student_models(server):
    _, vae = install_random_mini(server, TEACHER, VAE)
    return install_random_student(server, STUDENT, TIMESTEPS), vae


def _node_id(wf: dict, class_type: str) -> str:
    ids = [k for k, n in wf.items() if n["class_type"] == class_type]
    assert len(ids) == 1, f"{STUDENT_WORKFLOW.name}: expected one {class_type}, found {ids}"
    return ids[0]


def test_student_workflow_runs_long_and_sparse_with_the_cards_steps(client, student_models):
    wf = shrunk_talking_workflow(*student_models, seconds=SECONDS, size=SIZE, steps=0, workflow=STUDENT_WORKFLOW)
    sampler = _node_id(wf, "IASAStudentSampler")
    keyed, sparse = wf[_node_id(wf, "IASAKeyedWindows")], wf[_node_id(wf, "IASASparseAttention")]
    assert wf[sampler]["inputs"]["model"] == [_node_id(wf, "IASAKeyedWindows"), 0]     # keyed windows wrap sparse
    assert wf[sampler]["inputs"]["latent"] == [_node_id(wf, "IASAKeyedWindows"), 3]
    assert keyed["inputs"]["model"] == [_node_id(wf, "IASASparseAttention"), 0]
    assert (sparse["inputs"]["direction"], sparse["inputs"]["top_k"]) == ("causal", 2)
    assert not _by_type(wf, "KSampler") and _by_type(wf, "UNETLoader")[0]["inputs"]["unet_name"] == STUDENT
    wf["90"] = {"class_type": "IASATestPatchStats", "inputs": {"model": wf[sampler]["inputs"]["model"],
                                                               "latent": [sampler, 0]}}
    result = client.run(wf, timeout=900)
    assert result.status == "success", result.error

    steps = len(TIMESTEPS)                                  # steps 0 = the card's
    assert {d["max"] for d in result.progress(sampler)} == {steps}
    assert result.progress(sampler)[-1]["value"] == steps
    windows = len(KeyedWindowPlan(wan_length(round(SECONDS * 25)), keyed["inputs"]["window_frames"],
                                  keyed["inputs"]["overlap_frames"]))
    assert windows == 2
    stats = result.outputs["90"]["stats"][0]
    assert stats["LongVideoPatch"] == {"calls": steps, "windowed_calls": steps, "window_calls": steps * windows}
    attention = stats["SparseAttentionPatch"]
    assert attention["sparse"] == steps * windows * 1       # every window's self-attention (1 layer) went sparse
    assert attention.get("layouts_built") == windows and "dense_fallback" not in attention

    mp4 = next(f for f in saved_files(result.outputs) if f["filename"].endswith(".mp4"))
    assert "mini_student" in mp4["filename"]                # SaveVideo's prefix IASA/mini_student
    with av.open(io.BytesIO(client.view(mp4["filename"], mp4.get("subfolder", "")))) as c:
        assert c.streams.audio, "the mp4 has no sound"
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == wan_length(55) == 53 and frames[0].shape == (SIZE, SIZE, 3)
    assert np.abs(np.diff(np.stack(frames).astype(np.float32), axis=0)).mean() > 0.01   # not one frame repeated
