"""Bad input through the HTTP API: a clear error that names the input and the fix, and the server then
runs the next prompt fine."""
from __future__ import annotations

import json

import numpy as np
import pytest

from iasa.pose.keypoints import PoseSequence

from .conftest import REPO, rejection_text, speech_pose_nodes

GOOD = {
    **speech_pose_nodes(seed=1),
    "6": {"class_type": "IASARenderPose", "inputs": {"pose": ["5", 0], "width": 128, "height": 128, "body": True,
                                                     "face": True, "hands": True}},
    "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
}


def audio_prompt(name: str) -> dict:
    return {
        "1": {"class_type": "IASALoadAudio", "inputs": {"audio": name, "sample_rate": 0, "mono": True,
                                                        "start": 0.0, "duration": 0.0}},
        "2": {"class_type": "IASAAudioFeatures", "inputs": {"audio": ["1", 0], "fps": 25.0}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 1]}},
    }


def assert_server_still_serves(client):
    result = client.run(GOOD)
    assert result.status == "success", result.error


def run_expecting_error(client, prompt) -> dict:
    result = client.run(prompt)
    assert result.status == "error"
    err = result.error
    assert err is not None, result.history
    return err


@pytest.mark.parametrize("name, words", [
    ("does_not_exist.wav", ["audio", "not found", "upload"]),
    ("../secret.wav", ["audio", "outside", "input folder", "refused"]),
    ("../../../../../../etc/hostname", ["audio", "outside", "refused"]),
    ("/etc/hostname", ["audio", "outside", "refused"]),
])
def test_file_outside_or_missing_is_refused_at_validation(client, name, words):
    text = rejection_text(client, audio_prompt(name))
    for w in words:
        assert w in text, text
    assert_server_still_serves(client)


def rejection_errors(client, prompt: dict, node: str = "1") -> list[dict]:
    from iasa.harness.client import PromptRejected

    with pytest.raises(PromptRejected) as exc:
        client.queue(prompt)
    return exc.value.body["node_errors"][node]["errors"]


@pytest.mark.parametrize("name", ["speech\x00.wav", "does_not_exist.wav"])
def test_a_bad_file_name_is_one_clear_error_on_the_audio_input(client, server, name):
    """One error, flagged on the 'audio' widget only (it used to be listed under all five inputs), with no
    raw exception text (a NUL byte gave 'embedded null byte') and no server path."""
    errors = rejection_errors(client, audio_prompt(name))
    assert len(errors) == 1, errors
    err = errors[0]
    assert err["extra_info"]["input_name"] == "audio"
    text = err["details"]
    assert text.startswith("audio - audio: ") and "embedded null byte" not in text and "Traceback" not in text
    assert str(server.base) not in text
    assert ("control character" if "\x00" in name else "not found") in text
    assert_server_still_serves(client)


def test_node_errors_have_a_readable_type_and_no_server_path(client, server):
    err = run_expecting_error(client, audio_prompt("not_audio.wav"))
    assert err["exception_type"] == "iasa.audio.loading.AudioInputError"
    assert err["exception_message"].startswith("audio: ") and "'not_audio.wav'" in err["exception_message"]
    assert str(server.base) not in err["exception_message"]


@pytest.mark.parametrize("mode", ["error", "hold nearest"])
def test_single_image_without_person_explains_which_options_apply(client, mode):
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "no_person.png"}},
        "2": {"class_type": "IASAExtractPose", "inputs": {"image": ["1", 0], "smoothing": 0.0, "no_person": mode}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}},
    }
    msg = run_expecting_error(client, prompt)["exception_message"]
    assert msg.startswith("image: no person found in frame 0 (of 1)") and "'leave empty'" in msg
    if mode == "hold nearest":
        assert "no pose to copy" in msg and "video frames" in msg
    assert_server_still_serves(client)


def test_single_image_without_person_can_be_left_empty(client):
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "no_person.png"}},
        "2": {"class_type": "IASAExtractPose", "inputs": {"image": ["1", 0], "smoothing": 0.0,
                                                          "no_person": "leave empty"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    }
    result = client.run(prompt)
    assert result.status == "success", result.error
    assert '"people": []' in result.outputs["4"]["text"][0]


@pytest.mark.parametrize("name, node, words", [
    ("not_audio.wav", "1", ["not_audio.wav", "audio"]),
    ("corrupt.flac", "1", ["corrupt.flac", "audio"]),
    ("silence.wav", "2", ["audio", "silent"]),
    ("too_short.wav", "1", ["0.5", "s"]),
])
def test_unusable_audio_gives_a_clear_node_error(client, name, node, words):
    err = run_expecting_error(client, audio_prompt(name))
    msg = err["exception_message"]
    assert err["node_id"] == node, msg
    for w in words:
        assert w in msg, msg
    assert_server_still_serves(client)


def test_image_without_person_names_the_frame(client):
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "no_person.png"}},
        "2": {"class_type": "IASAExtractPose", "inputs": {"image": ["1", 0], "smoothing": 0.0, "no_person": "error"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}},
    }
    err = run_expecting_error(client, prompt)
    assert err["node_id"] == "2"
    assert "no person" in err["exception_message"] and "frame 0" in err["exception_message"]
    assert_server_still_serves(client)


def test_video_with_some_empty_frames_can_hold_the_nearest_pose(client):
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "reference.jpg"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "no_person.png"}},
        "3": {"class_type": "ImageScale", "inputs": {"image": ["2", 0], "upscale_method": "bilinear", "width": 512,
                                                     "height": 512, "crop": "disabled"}},
        "4": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["3", 0]}},
        "5": {"class_type": "IASAExtractPose", "inputs": {"image": ["4", 0], "smoothing": 0.0, "no_person": "error"}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 1]}},
    }
    err = run_expecting_error(client, prompt)
    assert "frame 1 (of 2)" in err["exception_message"] and "hold nearest" in err["exception_message"]
    prompt["5"]["inputs"]["no_person"] = "hold nearest"
    result = client.run(prompt)
    assert result.status == "success", result.error


def write_moving_driving_pose(path) -> None:
    """Three driving frames of the bundled speaker with the right arm raised by 0, 25 and 50 degrees (so the
    modes that stretch a short driving pose can be told apart by where the arm is)."""
    from iasa.pose.keypoints import B, RHAND, from_pose_keypoint, to_pose_keypoint
    from iasa.pose.pose_files import read_pose_file, write_pose_file

    ref = from_pose_keypoint(read_pose_file(REPO / "assets" / "demo" / "synth_speaker_pose.json"))
    arm = [B["r_elbow"], B["r_wrist"], *range(RHAND.start, RHAND.stop)]
    pivot = ref.points[0, B["r_shoulder"], :2]
    frames = np.repeat(ref.points[:1], 3, axis=0)
    for t, deg in enumerate((0.0, 25.0, 50.0)):
        a = np.deg2rad(deg)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        frames[t, arm, :2] = (frames[t, arm, :2] - pivot) @ rot.T + pivot
    write_pose_file(path, to_pose_keypoint(PoseSequence(frames, ref.width, ref.height)))


@pytest.mark.parametrize("mode, source", [
    ("loop", [0, 1, 2, 0, 1, 2, 0]), ("hold", [0, 1, 2, 2, 2, 2, 2]), ("pingpong", [0, 1, 2, 1, 0, 1, 2]),
])
def test_driving_pose_shorter_than_audio_follows_its_mode(client, server, mode, source):
    """1 s of audio (25 frames) driving the bundled speaker with a 3-frame moving pose: each mode repeats
    the driving frames in its own order, seen in the retargeted arm of every output frame."""
    from iasa.pose.keypoints import B

    write_moving_driving_pose(server.base / "input" / "iasa_test_driving.json")
    prompt = dict(GOOD)
    prompt["4"] = {"class_type": "IASALoadPose", "inputs": {"pose_file": "synth_speaker_pose.json",
                                                            "canvas_width": 0, "canvas_height": 0}}
    prompt["8"] = {"class_type": "IASALoadPose", "inputs": {"pose_file": "iasa_test_driving.json",
                                                            "canvas_width": 0, "canvas_height": 0}}
    prompt["5"] = {**GOOD["5"], "inputs": {**GOOD["5"]["inputs"], "driving_pose": ["8", 0], "driving_mode": mode}}
    prompt["9"] = {"class_type": "PreviewAny", "inputs": {"source": ["5", 0]}}
    result = client.run(prompt)
    assert result.status == "success", result.error
    assert len(result.outputs["7"]["images"]) == 25      # a frame per audio frame, not per driving frame
    frames = json.loads(result.outputs["9"]["text"][0])
    wrist = np.array([f["people"][0]["pose_keypoints_2d"][3 * B["r_wrist"]:3 * B["r_wrist"] + 2] for f in frames])
    assert len(wrist) == 25
    first = wrist[:3]
    assert np.linalg.norm(first[1] - first[0]) > 5 and np.linalg.norm(first[2] - first[1]) > 5   # the arm moves
    for t, src in enumerate(source):
        assert np.allclose(wrist[t], first[src], atol=0.5), (mode, t, wrist[t], first)
