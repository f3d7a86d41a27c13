"""IASA-mini through a real server: bundled model folders, stock loaders on IASA-mini-format files, the
talking workflow end to end (random weights, shrunk: plumbing, not quality), IASA Load Pose, and, when
the trained weights are bundled, a check that the teacher's frames follow the control pose."""
from __future__ import annotations

import io
import json
import os
import pathlib
import types
from dataclasses import dataclass

import av
import numpy as np
import pytest
from PIL import Image

from iasa.bench.quality import WORKFLOW, quality_prompt, wan_length
from iasa.bench.video_metrics import psnr
from iasa.harness.demo import TEACHER_FILE, VAE_FILE, bundled_weights, saved_files

from .conftest import REPO, rejection_text
from .test_bad_input import assert_server_still_serves

TEST_TEACHER = "iasa_test_mini_teacher.safetensors"
TEST_VAE = "iasa_test_mini_vae.safetensors"


def random_wan(seed: int = 0, ffn_dim: int = 256):
    """A 1-layer IASA-mini v2-format DiT (Fun-Control concat, in_dim 48, ``ref_conv`` reference tokens) with
    random weights, made by the training code's own builder."""
    import torch

    from iasa.training.tiny_wan import TeacherConfig, build_teacher

    model = build_teacher(TeacherConfig(dim=128, num_layers=1, ffn_dim=ffn_dim), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # the zero-initialised head would make every sample the same
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model


def write_random_mini(teacher_path, vae_path) -> None:
    """IASA-mini-format files with random weights: a 1-layer Fun-Control teacher (in_dim 48) and a
    width-8 Wan 2.1 VAE, made by the training code's own builders and writer."""
    import torch

    from iasa.training.tiny_wan import VAEConfig, build_vae, save_model

    save_model(random_wan(0), teacher_path, {"purpose": "integration tests (random)"}, dtype=torch.float32)
    save_model(build_vae(VAEConfig(dim=8), seed=0), vae_path, {"purpose": "integration tests (random)"},
               dtype=torch.float32)


def install_random_mini(server, teacher: str, vae: str) -> tuple[str, str]:
    """Random IASA-mini-format files under these names in the server's model folders."""
    models = server.base / "models"
    (models / "diffusion_models").mkdir(parents=True, exist_ok=True)
    (models / "vae").mkdir(parents=True, exist_ok=True)
    write_random_mini(models / "diffusion_models" / teacher, models / "vae" / vae)
    return teacher, vae


def install_random_student(server, name: str, timesteps=(1000.0, 500.0), shift: float = 3.0, seed: int = 11) -> str:
    """A random student in the IASA-mini v2 format (what scripts/distill_iasa_mini_gpu.sh writes: the teacher's
    architecture with a student card, timesteps and shift) in the server's diffusion_models folder. Its seed
    gives it weights unlike every other test model, so IASA Student Sampler finds its card by its weights."""
    import torch

    from iasa.training.distill.schedule import StudentSchedule
    from iasa.training.tiny_wan import save_model

    folder = server.base / "models" / "diffusion_models"
    folder.mkdir(parents=True, exist_ok=True)
    card = {"name": "random test student", "purpose": "integration tests (random)",
            "student": {**StudentSchedule(tuple(timesteps), shift).to_card(), "sampler": "lcm", "cfg": 1.0}}
    save_model(random_wan(seed), folder / name, card, dtype=torch.float32)
    return name


@pytest.fixture(scope="module")
def random_mini(server):
    return install_random_mini(server, TEST_TEACHER, TEST_VAE)


def _by_type(prompt: dict, class_type: str) -> list[dict]:
    return [n for n in prompt.values() if n["class_type"] == class_type]


def shrunk_talking_workflow(teacher: str, vae: str, seconds: float, size: int, steps: int,
                            workflow=WORKFLOW) -> dict:
    """A talking workflow as shipped, with other model files (``teacher``: the UNETLoader's, a student in the
    student workflow), less audio, a smaller video and fewer steps (a student's 0 = its card's)."""
    wf = json.loads(workflow.read_text())
    _by_type(wf, "UNETLoader")[0]["inputs"]["unet_name"] = teacher
    _by_type(wf, "VAELoader")[0]["inputs"]["vae_name"] = vae
    _by_type(wf, "IASALoadAudio")[0]["inputs"]["duration"] = seconds
    for node in _by_type(wf, "WanFunControlToVideo") + _by_type(wf, "Wan22FunControlToVideo"):
        node["inputs"]["width"] = node["inputs"]["height"] = size
    samplers = _by_type(wf, "KSampler") + _by_type(wf, "IASAStudentSampler")
    assert len(samplers) == 1, f"{workflow.name}: expected one KSampler or IASA Student Sampler"
    samplers[0]["inputs"]["steps"] = steps
    return wf


# ------------------------------------------------------------------------------------ model folders
@pytest.fixture(scope="module")
def comfy_path():
    """ComfyUI's modules importable in this process (iasa.nodes imports comfy_api)."""
    from iasa.training.comfy_env import ensure_comfy_on_path

    return ensure_comfy_on_path()


def test_bundled_folders_are_appended_once_after_the_users_folders(tmp_path, comfy_path):
    from iasa.nodes.model_folders import WEIGHT_EXTENSIONS, register_bundled_model_folders

    user_unet, user_vae = str(tmp_path / "user" / "unet"), str(tmp_path / "user" / "vae")
    fake = types.SimpleNamespace(folder_names_and_paths={"diffusion_models": ([user_unet], {".safetensors", ".ckpt"}),
                                                         "vae": ([user_vae], {".safetensors"})})
    root = tmp_path / "pack"
    added = register_bundled_model_folders(root, fake)
    assert added == {"diffusion_models": str(root / "models" / "diffusion_models"), "vae": str(root / "models" / "vae"),
                     "vae_approx": str(root / "models" / "vae_approx")}
    register_bundled_model_folders(root, fake)  # importing twice adds nothing
    assert fake.folder_names_and_paths["diffusion_models"][0] == [user_unet, added["diffusion_models"]]
    assert fake.folder_names_and_paths["vae"] == ([user_vae, added["vae"]], {".safetensors"})  # extensions untouched
    # A YAML entry that already points at the bundled folder (through a link) is not duplicated.
    (root / "models" / "vae").mkdir(parents=True)
    (tmp_path / "link").symlink_to(root / "models" / "vae")
    fake2 = types.SimpleNamespace(folder_names_and_paths={"diffusion_models": ([], set(WEIGHT_EXTENSIONS)),
                                                          "vae": ([str(tmp_path / "link")], {".safetensors"})})
    register_bundled_model_folders(root, fake2)
    assert fake2.folder_names_and_paths["vae"][0] == [str(tmp_path / "link")]
    # A ComfyUI without the key gets it with the weight extensions only (an empty set would list every file).
    fake3 = types.SimpleNamespace(folder_names_and_paths={})
    register_bundled_model_folders(root, fake3)
    assert fake3.folder_names_and_paths["vae"] == ([added["vae"]], set(WEIGHT_EXTENSIONS))


def test_real_folder_paths_lists_only_the_bundled_weights(tmp_path, comfy_path):
    import folder_paths

    from iasa.nodes.model_folders import register_bundled_model_folders

    root = tmp_path / "pack"
    for key, files in {"diffusion_models": ["tiny_teacher.safetensors", "tiny_teacher.json", "notes.md"],
                       "vae": ["tiny_vae.safetensors", "tiny_vae.json"]}.items():
        (root / "models" / key).mkdir(parents=True)
        for f in files:
            (root / "models" / key / f).write_bytes(b"x")
    saved = {k: (list(v[0]), set(v[1])) for k, v in folder_paths.folder_names_and_paths.items()}
    try:
        register_bundled_model_folders(root, folder_paths)
        assert "tiny_teacher.safetensors" in folder_paths.get_filename_list("diffusion_models")
        assert not {"tiny_teacher.json", "notes.md"} & set(folder_paths.get_filename_list("diffusion_models"))
        assert "tiny_vae.safetensors" in folder_paths.get_filename_list("vae")
        assert "tiny_vae.json" not in folder_paths.get_filename_list("vae")
        full = folder_paths.get_full_path("vae", "tiny_vae.safetensors")
        assert full == str(root / "models" / "vae" / "tiny_vae.safetensors")
    finally:
        folder_paths.folder_names_and_paths.clear()
        folder_paths.folder_names_and_paths.update(saved)
        folder_paths.filename_list_cache.clear()


def test_server_registers_the_packs_model_folders(client):
    paths = client.get_json("/internal/folder_paths")
    real = {k: [os.path.realpath(p) for p in v] for k, v in paths.items()}
    assert os.path.realpath(REPO / "models" / "diffusion_models") in real["diffusion_models"]
    assert os.path.realpath(REPO / "models" / "vae") in real["vae"]
    assert os.path.realpath(REPO / "models" / "vae_approx") in real["vae_approx"]


# ------------------------------------------------------------------------------ stock loaders, workflow
def test_stock_loaders_load_iasa_mini_format_files(client, random_mini):
    teacher, vae = random_mini
    info = client.get_json("/object_info/UNETLoader")["UNETLoader"]["input"]["required"]["unet_name"][0]
    assert teacher in info
    assert vae in client.get_json("/object_info/VAELoader")["VAELoader"]["input"]["required"]["vae_name"][0]
    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": teacher, "weight_dtype": "default"}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": vae}},
        "3": {"class_type": "IASAEmptyConditioning", "inputs": {"tokens": 512, "width": 4096}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "synth_speaker.png"}},
        "5": {"class_type": "WanFunControlToVideo",
              "inputs": {"positive": ["3", 0], "negative": ["3", 0], "vae": ["2", 0], "width": 32, "height": 48,
                         "length": 5, "batch_size": 1, "start_image": ["4", 0]}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 0, "steps": 1, "cfg": 1.0,
                                                   "sampler_name": "euler", "scheduler": "simple", "positive": ["5", 0],
                                                   "negative": ["5", 1], "latent_image": ["5", 2], "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["2", 0]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "iasa_test/mini_loaders"}},
    }
    result = client.run(prompt, timeout=600)
    assert result.status == "success", result.error
    files = saved_files(result.outputs)
    assert len(files) == 5  # 5 frames = 2 latent frames of the 48-channel (Fun-Control) model
    img = Image.open(io.BytesIO(client.view(files[0]["filename"], files[0]["subfolder"])))
    assert img.size == (32, 48)


def test_talking_workflow_runs_long_sparse_with_reference_tokens(client, random_mini):
    """The shipped talking workflow (Wan22FunControlToVideo ref_image -> ref_conv tokens, IASA Sparse
    Attention, IASA Keyed Windows), shrunk: 2.2 s of speech = 55 frames -> 53 frames in two keyed windows of 49, 128x128 (8 x 8 tokens a frame: smaller grids are refused by IASA Sparse Attention, dense
    would be cheaper), 2 steps, random weights."""
    wf = shrunk_talking_workflow(*random_mini, seconds=2.2, size=128, steps=2)
    assert _by_type(wf, "IASAKeyedWindows") and _by_type(wf, "IASASparseAttention")
    result = client.run(wf, timeout=900)
    assert result.status == "success", result.error
    mp4 = next(f for f in saved_files(result.outputs) if f["filename"].endswith(".mp4"))
    with av.open(io.BytesIO(client.view(mp4["filename"], mp4.get("subfolder", "")))) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        audio_s = float(a.duration * a.time_base)
        fps = float(v.average_rate)   # read while open: PyAV >= 18.1.1 refuses a closed container's streams
    # length = IASA Audio Features' frame_count (55); Wan makes 4k + 1 <= 55 frames; CreateVideo cuts the
    # audio to the video's length.
    assert len(frames) == wan_length(55) == 53 and frames[0].shape == (128, 128, 3)
    assert fps == 25.0 and abs(audio_s - 53 / 25) < 0.05
    assert np.abs(np.diff(np.stack(frames).astype(np.float32), axis=0)).mean() > 0.01   # not one frame repeated


# ------------------------------------------------------------------------------------- IASA Load Pose
def test_load_pose_reads_the_bundled_pose(client):
    prompt = {
        "1": {"class_type": "IASALoadPose", "inputs": {"pose_file": "synth_speaker_pose.json", "canvas_width": 0,
                                                        "canvas_height": 0}},
        "2": {"class_type": "IASARenderPose", "inputs": {"pose": ["1", 0], "width": 0, "height": 0, "body": True,
                                                         "face": True, "hands": True}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "iasa_test/load_pose"}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["1", 2]}},
    }
    result = client.run(prompt)
    assert result.status == "success", result.error
    assert result.outputs["4"]["text"] == ["1"] and result.outputs["5"]["text"] == ["256"]
    f = saved_files(result.outputs)[0]
    img = np.asarray(Image.open(io.BytesIO(client.view(f["filename"], f["subfolder"]))).convert("RGB"))
    assert img.shape == (256, 256, 3) and (img.max(axis=2) > 100).mean() > 0.01  # the skeleton is drawn


def _load_pose_prompt(name: str) -> dict:
    return {
        "1": {"class_type": "IASALoadPose", "inputs": {"pose_file": name, "canvas_width": 0, "canvas_height": 0}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}},
    }


@pytest.mark.parametrize("content, words", [
    ("{not json", ["pose_file", "iasa_bad.json", "not valid JSON", "line 1"]),
    ('{"people": "nobody"}', ["pose_file", "iasa_bad.json", "frame 0", "'people' list"]),
    ('[{"people": [{"pose_keypoints_2d": [1, 2, 3, 4]}], "canvas_width": 64, "canvas_height": 64}]',
     ["pose_keypoints_2d", "4 numbers", "54 or 75"]),
    ('{"version": 1.3, "people": []}', ["canvas_width", "canvas_height"]),
])
def test_load_pose_bad_files_give_a_clear_node_error(client, server, content, words):
    (server.base / "input" / "iasa_bad.json").write_text(content)
    result = client.run(_load_pose_prompt("iasa_bad.json"))
    assert result.status == "error"
    err = result.error
    assert err["node_id"] == "1"
    for w in words:
        assert w in err["exception_message"], err["exception_message"]
    assert_server_still_serves(client)


@pytest.mark.parametrize("name, words", [
    ("../secret.wav", ["pose_file", "outside", "refused"]),
    ("../../../../../../etc/passwd", ["pose_file", "outside", "refused"]),
    ("/etc/passwd", ["pose_file", "outside", "refused"]),
    ("missing_pose.json", ["pose_file", "not found"]),
])
def test_load_pose_refuses_files_outside_the_input_folder(client, name, words):
    text = rejection_text(client, _load_pose_prompt(name))
    for w in words:
        assert w in text, text
    assert_server_still_serves(client)


# ------------------------------------------------------------------------- quality (trained weights)
def _trained_weights_missing() -> str | None:
    missing = [str(p.relative_to(REPO)) for p in bundled_weights().values() if not p.is_file()]
    if not missing:
        return None
    return f"needs the trained IASA-mini weights ({', '.join(missing)} missing; see models/README.md)"


class BelowQualityAim(AssertionError):
    """The trained teacher below the issue's 28 dB aim (only this failure is the known, expected one)."""


class StudentBehindTeacher(AssertionError):
    """The student's verdict against the shipped teacher (the distillation issue's 0.5 dB aim)."""


@dataclass
class FollowPoseCase:
    """33 frames of the bundled speaker driven by 1.3 s of the demo speech, with the same poses drawn by the
    synthetic-speaker renderer as the ground truth."""
    pose_file: str
    truth: np.ndarray
    reference: np.ndarray
    moved: np.ndarray          # [T, H, W]: where the pose moved the picture away from the reference

    def scores(self, gen: np.ndarray) -> dict:
        assert gen.shape == self.truth.shape
        copied = np.broadcast_to(self.reference, gen.shape).copy()
        return {"overall": psnr(gen, self.truth), "moved": psnr(gen, self.truth, self.moved),
                "copy_moved": psnr(copied, self.truth, self.moved)}   # the reference copied, same pixels

    def sample(self, client, workflow: pathlib.Path, prefix: str) -> np.ndarray:
        prompt = quality_prompt(json.loads(workflow.read_text()), "synth_speaker.png", self.pose_file, prefix)
        result = client.run(prompt, timeout=1800)
        assert result.status == "success", result.error
        return np.stack([np.asarray(Image.open(io.BytesIO(client.view(f["filename"], f["subfolder"]))).convert("RGB"))
                         for f in saved_files(result.outputs)])


def _numbers(sc: dict) -> str:
    return (f"PSNR to the ground truth {sc['overall']:.2f} dB; where the pose moved: {sc['moved']:.2f} dB to the "
            f"ground truth, the reference copied to every frame {sc['copy_moved']:.2f} dB")


@pytest.fixture(scope="module")
def follow_pose(server) -> FollowPoseCase:
    from iasa.audio.features import features_from_audio
    from iasa.audio.loading import load_audio_file
    from iasa.pose.audio_to_pose import audio_to_pose
    from iasa.pose.keypoints import from_pose_keypoint, to_pose_keypoint
    from iasa.pose.pose_files import read_pose_file, write_pose_file
    from iasa.training.synth.character import draw_sequence
    from iasa.training.synth.demo_assets import DEFAULT_SEED
    from iasa.training.synth.identity import Identity

    ref_pose = from_pose_keypoint(read_pose_file(REPO / "assets" / "demo" / "synth_speaker_pose.json"))
    audio = load_audio_file(REPO / "assets" / "demo" / "speech.wav", duration=1.3)
    seq = audio_to_pose(ref_pose, features_from_audio(audio, 25.0), seed=7)
    seq.points = seq.points[: wan_length(len(seq))]
    write_pose_file(server.base / "input" / "iasa_test_follow_pose.json", to_pose_keypoint(seq))
    truth = draw_sequence(seq.points, Identity.sample(DEFAULT_SEED), 256)
    reference = np.asarray(Image.open(REPO / "assets" / "demo" / "synth_speaker.png").convert("RGB"))
    moved = np.abs(truth.astype(np.int16) - reference.astype(np.int16)).max(axis=-1) > 40
    assert moved[1:].mean() > 0.002, "the test pose barely moves; make it longer"
    return FollowPoseCase("iasa_test_follow_pose.json", truth, reference, moved)


@pytest.fixture(scope="module")
def teacher_scores(client, follow_pose) -> dict:
    """The shipped teacher workflow's frames on the case (sampled once for both trained-weights tests)."""
    assert {TEACHER_FILE, VAE_FILE} <= {n["inputs"].get("unet_name", n["inputs"].get("vae_name"))
                                        for n in json.loads(WORKFLOW.read_text()).values()}
    return follow_pose.scores(follow_pose.sample(client, WORKFLOW, "iasa_test/follow_pose"))


@pytest.mark.skipif(_trained_weights_missing() is not None, reason=_trained_weights_missing() or "")
def test_trained_teacher_frames_follow_the_control_pose(teacher_scores):
    """The shipped teacher workflow on the follow-pose case, against the IASA-mini v2 issue's pose-following aim:
    where the pose moved the picture away from the reference (where copying the reference, what the v1 teacher
    did, cannot score), >= 4 dB above the reference copied to every frame."""
    sc = teacher_scores
    print(_numbers(sc))   # the measured verdict, shown by `pytest -rP` for a pass too
    assert sc["moved"] >= sc["copy_moved"] + 4.0, f"where the pose moved, not 4 dB above copying the reference: {_numbers(sc)}"


@pytest.mark.skipif(_trained_weights_missing() is not None, reason=_trained_weights_missing() or "")
@pytest.mark.xfail(strict=True, raises=BelowQualityAim, reason=(
    "the shipped IASA-mini v2 teacher is not yet at the IASA-mini v2 issue's 28 dB aim (measured 2026-12-07 with the "
    "stage-3 teacher, its workflow's cfg 1.5: 25.71 dB on this case; 26.47 dB on the 8 held-out clips of "
    "bench.quality at 49 frames, where the VAE round trip itself gives 28.67 dB). Strict: once a retrained model meets the aim "
    "this XPASSes and fails, so remove the marker then."))
def test_trained_teacher_reaches_the_quality_aim(teacher_scores):
    """The same frames against the issue's overall aim: >= 28 dB PSNR to the ground truth."""
    sc = teacher_scores
    # Only this check is the expected failure (BelowQualityAim); a crash or a broken set-up fails the test as usual.
    if not sc["overall"] >= 28.0:
        raise BelowQualityAim(f"below the 28 dB aim: {_numbers(sc)}")


def _student_missing() -> str | None:
    from iasa.harness.demo import STUDENT_FILE

    student = REPO / "models" / "diffusion_models" / STUDENT_FILE
    return _trained_weights_missing() or (None if student.is_file() else
                                          f"needs the distilled student ({student.relative_to(REPO)} missing)")


@pytest.mark.skipif(_student_missing() is not None, reason=_student_missing() or "")
def test_shipped_student_keeps_the_teachers_quality_and_follows_the_pose(client, follow_pose, teacher_scores):
    """The shipped student workflow (2 of its 4 trained steps, no CFG) on the same case: above the reference copied to every frame
    where the pose moved, and within 0.5 dB of the teacher workflow overall (the distillation issue's aim)."""
    from iasa.harness.demo import STUDENT_WORKFLOW

    sc = follow_pose.scores(follow_pose.sample(client, STUDENT_WORKFLOW, "iasa_test/follow_pose_student"))
    numbers = f"student: {_numbers(sc)}; teacher: {_numbers(teacher_scores)}"
    print(numbers)   # the measured verdict, shown by `pytest -rP` for a pass too
    assert sc["moved"] > sc["copy_moved"], numbers   # a plain failure: not the expected one
    if not sc["overall"] >= teacher_scores["overall"] - 0.5:
        raise StudentBehindTeacher(f"more than 0.5 dB below the teacher: {numbers}")
