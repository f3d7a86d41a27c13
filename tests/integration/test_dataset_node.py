"""IASA Build Dataset through the real server: a short video of a real person with speech becomes shards (pose,
region masks, speech energy, latents) that IASA Distill Student trains on without encoding again; a video
without a person or without audio gives a clear error naming it, and the server runs the next prompt."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from .test_bad_input import assert_server_still_serves
from .test_distill_nodes import VAE, _distill, distill_env  # noqa: F401  (distill_env: fixture)

FPS, SR = 25, 16000


def _write_video(path, frames: np.ndarray, audio: np.ndarray | None) -> None:
    import av

    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=FPS)
        v.width, v.height, v.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        a = c.add_stream("aac", rate=SR) if audio is not None else None
        if a is not None:
            a.layout = "mono"
        for f in frames:
            for p in v.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        if a is not None:
            frame = av.AudioFrame.from_ndarray(audio[None].astype(np.float32), format="fltp", layout="mono")
            frame.sample_rate = SR
            for p in [*a.encode(frame), *a.encode()]:
                c.mux(p)


def _speech(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return 0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))


@pytest.fixture(scope="module")
def videos(server, distill_env):
    photo = np.asarray(Image.open(server.base / "input" / "reference.jpg").convert("RGB").resize((256, 256)))
    person = np.stack([np.roll(photo, 2 * i, axis=1) for i in range(15)])            # 0.6 s, a person
    folders = {"ok": "iasa_test_videos", "no_person": "iasa_test_videos_blank", "no_audio": "iasa_test_videos_mute"}
    for f in folders.values():
        (server.base / "input" / f).mkdir(exist_ok=True)
    _write_video(server.base / "input" / folders["ok"] / "speaker.mp4", person, _speech(0.6))
    _write_video(server.base / "input" / folders["no_person"] / "blank.mp4", np.full_like(person, 128), _speech(0.6))
    _write_video(server.base / "input" / folders["no_audio"] / "mute.mp4", person, None)
    return folders


def _build(videos_folder: str, name: str, with_vae: bool = True) -> dict:
    inputs = {"videos": videos_folder, "output_name": name, "size": 32, "fps": 25.0, "max_seconds": 6.0,
              "heldout_every": 0, "frames": 5}
    if with_vae:
        inputs["vae"] = ["2", 0]
    return {"2": {"class_type": "VAELoader", "inputs": {"vae_name": VAE}},
            "20": {"class_type": "IASABuildDataset", "inputs": inputs}}


def test_build_dataset_makes_shards_the_distiller_trains_on(client, server, videos):
    from iasa.training.synth.shards import read_shard

    prompt = {**_distill("iasa_test_from_videos", iterations=1), **_build(videos["ok"], "iasa_test_built")}
    prompt["10"]["inputs"]["dataset"] = ["20", 0]
    result = client.run(prompt)
    assert result.status == "success", result.error
    progress = result.progress("20")                                        # ComfyUI progress, ends complete
    assert progress and progress[-1]["value"] == progress[-1]["max"] >= 1
    folder = server.base / "input" / "iasa_test_built"
    (clip,) = read_shard(folder / "shard-0000.safetensors")
    assert clip["frames"].shape == (15, 32, 32, 3) and clip["split"] == "train" and clip["sample_rate"] == 16000
    assert clip["keypoints"].shape == (15, 130, 3) and (clip["keypoints"][:, :, 2] > 0.3).sum(1).min() > 10
    assert clip["masks"]["face"].any(axis=(1, 2)).all() and clip["energy"].max() > 0.5
    assert abs(len(clip["audio"]) - 0.6 * 16000) < 400
    cache = folder / ".iasa_cache" / "latents_f5.safetensors"
    assert cache.is_file() and cache.with_name("latents_f5.gt.safetensors").is_file()
    run = server.base / "output" / "iasa_distill" / "iasa_test_from_videos"
    assert not (run / "latents.safetensors").exists()                       # the dataset's latents were reused
    student = server.base / "models" / "diffusion_models" / "iasa_test_from_videos.safetensors"
    assert student.is_file() and cache.stat().st_mtime < student.stat().st_mtime


@pytest.mark.parametrize("case, words", [
    ("no_person", ["blank.mp4", "no person"]),
    ("no_audio", ["mute.mp4", "no audio track"]),
])
def test_build_dataset_refuses_a_video_without_a_person_or_audio(client, videos, case, words):
    prompt = _build(videos[case], "iasa_test_bad_dataset", with_vae=False)
    prompt["21"] = {"class_type": "PreviewAny", "inputs": {"source": ["20", 0]}}
    result = client.run(prompt)
    assert result.status == "error" and result.error["node_id"] == "20", result.error
    for w in words:
        assert w in result.error["exception_message"], result.error["exception_message"]
    assert_server_still_serves(client)
