"""The demo picks the IASA-mini talking workflow only when both bundled weight files exist, and the student
workflow only when a v2 student sits beside a v2 teacher and VAE (temporary folders: no student ships yet)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from iasa.harness.demo import (DEMO_INPUTS, MINI_V2_WORKFLOW, MINI_WEIGHTS, POSE_WORKFLOW, STUDENT_FILE,
                               STUDENT_WORKFLOW, TEACHER_FILE, VAE_FILE, choose_workflow)
from iasa.training.tiny_vae import VAE_FILE as TINY_VAE_FILE
from iasa.training.tiny_wan import CARD_KEY

V1_KEYS = {"head.modulation": torch.zeros(1, 2, 4)}
V2_KEYS = {**V1_KEYS, "ref_conv.weight": torch.zeros(4, 16, 2, 2)}
STUDENT_CARD = {"student": {"timesteps": [1000.0, 750.0, 500.0, 250.0], "shift": 3.0}}


def test_talking_workflow_needs_both_files_and_follows_the_teachers_reference_path(tmp_path, capsys):
    assert choose_workflow(tmp_path) == POSE_WORKFLOW
    out = capsys.readouterr().out
    assert "NOTE" in out and "missing" in out and "iasa_mini_teacher.safetensors" in out and "iasa_mini_vae" in out
    teacher, vae = (tmp_path / key / name for name, key in MINI_WEIGHTS.items())
    teacher.parent.mkdir()
    save_file({"head.modulation": torch.zeros(1, 2, 4)}, str(teacher))        # v1: reference as start image
    assert choose_workflow(tmp_path) == POSE_WORKFLOW
    assert "iasa_mini_vae" in capsys.readouterr().out
    vae.parent.mkdir()
    vae.write_bytes(b"x")
    with pytest.raises(ValueError) as e:                                      # v1: no workflow runs it any more
        choose_workflow(tmp_path)
    for words in ("v1 file", "no ref_conv.weight", str(teacher), "git checkout -- models/diffusion_models"):
        assert words in str(e.value), str(e.value)
    save_file({"head.modulation": torch.zeros(1, 2, 4), "ref_conv.weight": torch.zeros(4, 16, 2, 2)}, str(teacher))
    assert choose_workflow(tmp_path) == MINI_V2_WORKFLOW                      # v2: ref_conv reference tokens
    assert capsys.readouterr().out == ""
    teacher.write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        choose_workflow(tmp_path)


def _models(tmp_path, teacher: dict | None = V2_KEYS, vae: bool = True, student: dict | None = V2_KEYS,
            card: dict | None = STUDENT_CARD, tiny: bool = True):
    """A models folder: teacher / VAE / student / tiny-autoencoder files (tensors; the student with ``card`` in
    its header)."""
    (tmp_path / "diffusion_models").mkdir(exist_ok=True)
    (tmp_path / "vae").mkdir(exist_ok=True)
    if teacher is not None:
        save_file(teacher, str(tmp_path / "diffusion_models" / TEACHER_FILE))
    if vae:
        (tmp_path / "vae" / VAE_FILE).write_bytes(b"x")
    if tiny:
        (tmp_path / "vae" / TINY_VAE_FILE).write_bytes(b"x")
    student_path = tmp_path / "diffusion_models" / STUDENT_FILE
    if student is not None:
        save_file(student, str(student_path), metadata={CARD_KEY: json.dumps(card)} if card else None)
    return student_path


def test_a_v2_student_beside_the_v2_pair_runs_the_student_workflow_and_says_so(tmp_path, capsys):
    _models(tmp_path)
    assert choose_workflow(tmp_path) == STUDENT_WORKFLOW
    out = capsys.readouterr().out
    assert STUDENT_FILE in out and STUDENT_WORKFLOW.name in out and "NOTE" not in out


def test_without_the_tiny_autoencoder_the_student_steps_aside_and_says_how_to_restore_it(tmp_path, capsys):
    _models(tmp_path, tiny=False)
    assert choose_workflow(tmp_path) == MINI_V2_WORKFLOW
    out = capsys.readouterr().out
    for words in ("NOTE", STUDENT_FILE, "is not used", TINY_VAE_FILE, "git checkout", MINI_V2_WORKFLOW.name):
        assert words in out, out


def test_without_a_student_the_teacher_workflow_is_unchanged(tmp_path, capsys):
    _models(tmp_path, student=None)
    assert choose_workflow(tmp_path) == MINI_V2_WORKFLOW and capsys.readouterr().out == ""


@pytest.mark.parametrize("teacher, vae, student, expected", [
    (V2_KEYS, True, V1_KEYS, MINI_V2_WORKFLOW),       # a student without ref_conv: not of the v2 teacher
    (V2_KEYS, False, V2_KEYS, POSE_WORKFLOW),         # no VAE: nothing can decode
    (None, True, V2_KEYS, POSE_WORKFLOW),             # no teacher: the bundled pair is incomplete
], ids=["v1_student", "no_vae", "no_teacher"])
def test_a_student_is_used_only_with_the_v2_teacher_and_vae(tmp_path, capsys, teacher, vae, student, expected):
    _models(tmp_path, teacher=teacher, vae=vae, student=student)
    assert choose_workflow(tmp_path) == expected
    out = capsys.readouterr().out
    assert "NOTE" in out
    if expected != POSE_WORKFLOW:
        assert STUDENT_FILE in out and "is not used" in out


@pytest.mark.parametrize("card, bytes_, words", [
    (None, None, ["no student card", "iasa_model_card", "distill_iasa_mini_gpu.sh"]),
    ({"name": "a teacher"}, None, ["no student card", "IASA Student Sampler"]),
    (STUDENT_CARD, b"not safetensors", ["not a readable safetensors file", "remove it"]),
], ids=["no_card", "not_a_student_card", "corrupt"])
def test_a_broken_student_file_is_a_clear_error(tmp_path, card, bytes_, words):
    path = _models(tmp_path, card=card)
    if bytes_:
        path.write_bytes(bytes_)
    with pytest.raises(ValueError) as e:
        choose_workflow(tmp_path)
    for w in words + [STUDENT_FILE]:
        assert w in str(e.value), str(e.value)


@pytest.mark.parametrize("workflow, models", [(MINI_V2_WORKFLOW, set(MINI_WEIGHTS)),
                                              (STUDENT_WORKFLOW, {STUDENT_FILE, VAE_FILE, TINY_VAE_FILE})],
                         ids=["teacher", "student"])
def test_talking_workflow_reads_bundled_inputs_and_models(workflow, models):
    wf = json.loads(workflow.read_text())
    names = {p.name for p in DEMO_INPUTS}
    files = {v for n in wf.values() for k, v in n["inputs"].items()
             if k in ("audio", "image", "pose_file") and isinstance(v, str)}
    assert len(files) == 3
    assert files <= names and all(p.is_file() for p in DEMO_INPUTS)
    assert {v for n in wf.values() for k, v in n["inputs"].items() if k in ("unet_name", "vae_name")} == models


def test_the_student_workflow_is_the_v2_graph_with_the_student_sampler_in_place_of_cfg():
    """Same speech, pose, conditioning, sparse attention and keyed windows as the v2 teacher workflow; the student
    sampler (2 of the bundled student's 4 trained steps: bench/results/quality_student_steps_8_clips_49_frames.json)
    instead of KSampler with a negative and a flow shift."""
    student, teacher = (json.loads(w.read_text()) for w in (STUDENT_WORKFLOW, MINI_V2_WORKFLOW))
    shared = ("IASALoadAudio", "IASAAudioFeatures", "IASAAudioToPose", "IASARenderPose", "IASASparseAttention",
              "IASAKeyedWindows", "IASAVAEPrecision", "IASALongVAEDecode", "CreateVideo")
    def settings(wf: dict, t: str) -> list[dict]:  # the settings; links differ (no flow shift, the tiny encoder)
        return [{k: v for k, v in n["inputs"].items() if not isinstance(v, list)} for n in wf.values()
                if n["class_type"] == t]

    for t in shared:
        assert settings(student, t) == settings(teacher, t) and settings(student, t), t
    types = [n["class_type"] for n in student.values()]
    assert types.count("Wan22FunControlToVideo") == 1 and "KSampler" not in types and "ModelSamplingSD3" not in types
    sampler = next(n["inputs"] for n in student.values() if n["class_type"] == "IASAStudentSampler")
    assert sampler["steps"] == 2 and student[sampler["model"][0]]["class_type"] == "IASAKeyedWindows"
    for wf in (student, teacher):   # the pose video reaches the model through the keyed windows only
        keyed = next(k for k, n in wf.items() if n["class_type"] == "IASAKeyedWindows")
        assert all("control_video" not in n["inputs"] for n in wf.values() if n["class_type"] == "Wan22FunControlToVideo")
        assert wf[keyed]["inputs"]["control_video"][0] in wf


def test_linked_weights_places_the_student_beside_the_teacher_and_refuses_other_names(tmp_path):
    from iasa.harness.demo import linked_weights

    src = tmp_path / "s.safetensors"
    save_file({"w": torch.zeros(1)}, str(src))
    base = tmp_path / "base"
    with linked_weights(base, {STUDENT_FILE: src}) as links:
        assert links == [base / "models" / "diffusion_models" / STUDENT_FILE] and links[0].resolve() == src
    assert not links[0].exists()
    with pytest.raises(ValueError, match="not a bundled IASA-mini file name"):
        with linked_weights(base, {"other.safetensors": src}):
            pass
