"""IASA Extract Pose, IASA Audio To Pose, IASA Render Pose, IASA Load Pose and IASA Save Pose."""
from __future__ import annotations

import logging
import os

import comfy.utils
from comfy_api.latest import io

from ..pose.audio_to_pose import audio_to_pose
from ..pose.extract import extract_pose
from ..pose.pose_files import read_pose_file, write_pose_file
from ..pose.keypoints import (PoseFormatError, frames_without_person, from_pose_keypoint, hold_nearest_person,
                              to_pose_keypoint)
from ..pose.regions import sequence_masks
from ..pose.render import render_pose
from .convert import VIDEO_DTYPE, frames_to_image, image_to_uint8, masks_to_tensor
from .files import file_fingerprint, input_file_problem, list_input_files, resolve_input_file
from .types import AudioFeaturesType, PoseKeypoint

log = logging.getLogger(__name__)

NO_PERSON_MODES = ["error", "hold nearest", "leave empty"]


def _describe_frames(frames: list[int], total: int) -> str:
    shown = ", ".join(str(f) for f in frames[:10]) + (" ..." if len(frames) > 10 else "")
    return f"frame{'s' if len(frames) > 1 else ''} {shown} (of {total})"


def no_person_message(where: str, frames: int, missing: int, mode: str) -> str:
    """The error of IASA Extract Pose when frames have no person and ``no_person`` cannot help."""
    fix = "Use an image where one person's face and upper body are visible"
    if mode == "hold nearest":   # every frame is empty: there is no pose to copy
        return (f"image: no person found in {where}, so no_person 'hold nearest' has no pose to copy (it fills "
                f"video frames without a person from the nearest frame with one). {fix}, or set no_person to "
                "'leave empty' to output an empty pose.")
    if missing == frames:
        return (f"image: no person found in {where}. {fix}, or set no_person to 'leave empty' to output an "
                "empty pose ('hold nearest' needs a video with the person visible in some frame).")
    return (f"image: no person found in {where}. {fix} in every frame, or set no_person to 'hold nearest' (copy "
            "the nearest frame's pose) or 'leave empty'.")


class IASAExtractPose(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IASAExtractPose",
            display_name="IASA Extract Pose",
            category="IASA/pose",
            description="Body, face and hand keypoints with mediapipe Holistic (offline model), in the OpenPose/DWPose "
                        "POSE_KEYPOINT layout, plus the rendered skeleton and region masks.",
            inputs=[
                io.Image.Input("image", tooltip="One image (the reference) or video frames."),
                io.Float.Input("smoothing", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="Temporal smoothing of keypoints for video (0 = off). Ignored for one image."),
                io.Combo.Input("no_person", options=NO_PERSON_MODES, default="error",
                               tooltip="What to do with frames where no person is found: stop with an error naming "
                                       "them; copy the pose of the nearest frame with a person (video frames "
                                       "only: a single image has no other frame); or leave the pose empty."),
            ],
            outputs=[
                PoseKeypoint.Output(display_name="pose"),
                io.Image.Output(display_name="skeleton"),
                io.Mask.Output(display_name="face"),
                io.Mask.Output(display_name="lips"),
                io.Mask.Output(display_name="hands"),
                io.Mask.Output(display_name="arms"),
                io.Mask.Output(display_name="torso"),
            ],
        )

    @classmethod
    def execute(cls, image, smoothing, no_person) -> io.NodeOutput:
        frames = image_to_uint8(image, "image")
        bar = comfy.utils.ProgressBar(len(frames))
        seq = extract_pose(frames, smoothing=smoothing, progress=lambda done, total: bar.update_absolute(done, total))
        missing = frames_without_person(seq)
        if missing:
            where = _describe_frames(missing, len(seq))
            if no_person == "error" or (no_person == "hold nearest" and len(missing) == len(seq)):
                raise ValueError(no_person_message(where, len(seq), len(missing), no_person))
            if no_person == "hold nearest":
                log.warning("IASA Extract Pose: no person in %s; holding the nearest detected pose", where)
                seq = hold_nearest_person(seq)
            else:
                log.warning("IASA Extract Pose: no person in %s; no_person is 'leave empty', so the pose of "
                            "those frames is empty", where)
        masks = sequence_masks(seq)
        hands = masks["left_hand"] | masks["right_hand"]
        return io.NodeOutput(
            to_pose_keypoint(seq), frames_to_image(render_pose(seq, dtype=VIDEO_DTYPE)),
            masks_to_tensor(masks["face"]), masks_to_tensor(masks["lips"]), masks_to_tensor(hands),
            masks_to_tensor(masks["arms"]), masks_to_tensor(masks["torso"]),
        )


class IASAAudioToPose(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IASAAudioToPose",
            display_name="IASA Audio To Pose",
            category="IASA/pose",
            description="Animates a reference pose from speech: lips follow the audio (closed in silence), blinks, "
                        "head motion with prosody and beat gestures; or retargets a driving pose sequence onto the "
                        "reference skeleton with lips from the audio. One pose per video frame.",
            inputs=[
                PoseKeypoint.Input("reference_pose", tooltip="Pose of the reference image (IASA Extract Pose or DWPose)."),
                AudioFeaturesType.Input("features", tooltip="Speech features from IASA Audio Features."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True,
                             tooltip="Seed for blinks, head sway and gesture choice."),
                io.Float.Input("mouth", default=1.0, min=0.0, max=2.0, step=0.05, tooltip="Mouth opening strength."),
                io.Float.Input("head", default=1.0, min=0.0, max=2.0, step=0.05, tooltip="Head motion strength."),
                io.Float.Input("gestures", default=1.0, min=0.0, max=2.0, step=0.05,
                               tooltip="Beat-gesture strength of arms and hands (0 = still)."),
                io.Boolean.Input("blinks", default=True, tooltip="Add eye blinks."),
                PoseKeypoint.Input("driving_pose", optional=True,
                                   tooltip="Optional pose sequence (e.g. from a video) whose body and hand motion is "
                                           "retargeted onto the reference; lips still come from the audio."),
                io.Combo.Input("driving_mode", options=["loop", "hold", "pingpong"], default="loop",
                               tooltip="When the driving sequence is shorter than the audio: repeat it, hold its last "
                                       "frame, or play it back and forth."),
            ],
            outputs=[PoseKeypoint.Output(display_name="pose")],
        )

    @classmethod
    def execute(cls, reference_pose, features, seed, mouth, head, gestures, blinks,
                driving_pose=None, driving_mode="loop") -> io.NodeOutput:
        ref = from_pose_keypoint(reference_pose, input_name="reference_pose")
        present = [t for t in range(len(ref)) if t not in set(frames_without_person(ref))]
        if not present:
            raise PoseFormatError("reference_pose: no person in any frame; extract the pose from an image where one "
                                  "person's face and upper body are visible")
        if len(ref) > 1:
            log.info("IASA Audio To Pose: reference_pose has %d frames; using frame %d", len(ref), present[0])
        driving = None
        if driving_pose is not None:
            driving = from_pose_keypoint(driving_pose, input_name="driving_pose")
            if not driving.has_person().any():
                raise PoseFormatError("driving_pose: no person in any frame; extract it from a video where the "
                                      "person is visible, or disconnect it to use audio-driven gestures")
            if len(driving) < features.n_frames:
                log.info("IASA Audio To Pose: driving_pose has %d frames for %d audio frames; mode '%s'",
                         len(driving), features.n_frames, driving_mode)
        seq = audio_to_pose(ref.frame(present[0]), features, seed=seed, mouth=mouth, head=head, gestures=gestures,
                            blinks=blinks, driving=driving, driving_mode=driving_mode)
        return io.NodeOutput(to_pose_keypoint(seq))


class IASARenderPose(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IASARenderPose",
            display_name="IASA Render Pose",
            category="IASA/pose",
            description="Draws POSE_KEYPOINT frames as a DWPose/OpenPose-coloured skeleton video, ready for "
                        "WanFunControlToVideo (control_video) or WanAnimateToVideo (pose_video). The frames are a "
                        "float16 IMAGE (half the memory of float32: minutes of video fit in RAM).",
            inputs=[
                PoseKeypoint.Input("pose", tooltip="Pose sequence to draw."),
                io.Int.Input("width", default=0, min=0, max=8192, step=8,
                             tooltip="Output width in pixels; 0 uses the pose's canvas width."),
                io.Int.Input("height", default=0, min=0, max=8192, step=8,
                             tooltip="Output height in pixels; 0 uses the pose's canvas height."),
                io.Boolean.Input("body", default=True, tooltip="Draw the body skeleton."),
                io.Boolean.Input("face", default=True, tooltip="Draw the face points."),
                io.Boolean.Input("hands", default=True, tooltip="Draw the hands."),
            ],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def execute(cls, pose, width, height, body, face, hands) -> io.NodeOutput:
        seq = from_pose_keypoint(pose, input_name="pose")
        bar = comfy.utils.ProgressBar(len(seq))
        frames = render_pose(seq, width or None, height or None, body=body, face=face, hands=hands, dtype=VIDEO_DTYPE,
                             progress=lambda done, total: bar.update_absolute(done, total))
        return io.NodeOutput(frames_to_image(frames))


class IASALoadPose(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IASALoadPose",
            display_name="IASA Load Pose",
            category="IASA/pose",
            description="Loads POSE_KEYPOINT from a .json file in ComfyUI's input folder: DWPose / OpenPose "
                        "keypoints as comfyui_controlnet_aux saves them (a list of frames or one frame), or "
                        "OpenPose's own JSON (BODY_25 is converted to the 18-point body).",
            inputs=[
                io.Combo.Input("pose_file", options=list_input_files(suffixes=(".json",)),
                               tooltip="Pose JSON file in ComfyUI's input folder (copy it there)."),
                io.Int.Input("canvas_width", default=0, min=0, max=16384,
                             tooltip="Canvas width in pixels, used only when the file has none (OpenPose's own "
                                     "JSON); 0 = take it from the file."),
                io.Int.Input("canvas_height", default=0, min=0, max=16384,
                             tooltip="Canvas height in pixels, used only when the file has none; 0 = from the file."),
            ],
            outputs=[
                PoseKeypoint.Output(display_name="pose"),
                io.Int.Output(display_name="frame_count"),
                io.Int.Output(display_name="width"),
                io.Int.Output(display_name="height"),
            ],
        )

    @classmethod
    def validate_inputs(cls, pose_file):  # only "pose_file": ComfyUI reports a problem once per input named here
        return input_file_problem(pose_file, "pose_file") or True

    @classmethod
    def fingerprint_inputs(cls, pose_file, canvas_width=0, canvas_height=0, **_):
        return f"{file_fingerprint(pose_file, 'pose_file')}:{canvas_width}x{canvas_height}"

    @classmethod
    def execute(cls, pose_file, canvas_width, canvas_height) -> io.NodeOutput:
        frames = read_pose_file(resolve_input_file(pose_file, "pose_file"), "pose_file", (canvas_width, canvas_height))
        return io.NodeOutput(frames, len(frames), frames[0]["canvas_width"], frames[0]["canvas_height"])


class IASASavePose(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IASASavePose",
            display_name="IASA Save Pose",
            category="IASA/pose",
            description="Saves POSE_KEYPOINT (ours or DWPose's) as OpenPose/DWPose JSON in ComfyUI's output folder: "
                        "a list with one frame dict per video frame, the layout IASA Load Pose and "
                        "comfyui_controlnet_aux read. Copy the file into the input folder to load it again.",
            is_output_node=True,
            inputs=[
                PoseKeypoint.Input("pose", tooltip="Pose sequence to save (IASA Extract Pose, IASA Audio To Pose, "
                                                   "DWPose Estimator, ...)."),
                io.String.Input("filename_prefix", default="IASA/pose",
                                tooltip="File name prefix inside the output folder; a counter and .json are added."),
            ],
            outputs=[io.String.Output(display_name="file")],
        )

    @classmethod
    def execute(cls, pose, filename_prefix) -> io.NodeOutput:
        import folder_paths

        frames = to_pose_keypoint(from_pose_keypoint(pose, input_name="pose"))
        out_dir = folder_paths.get_output_directory()
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, out_dir)
        filename = f"{name}_{counter:05}_.json"
        write_pose_file(os.path.join(folder, filename), frames)
        rel = os.path.join(subfolder, filename) if subfolder else filename
        return io.NodeOutput(rel, ui={"text": [rel], "pose_files": [{"filename": filename, "subfolder": subfolder,
                                                                      "type": "output"}]})
