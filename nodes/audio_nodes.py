"""IASA Load Audio and IASA Audio Features."""
from __future__ import annotations

from comfy_api.latest import io

from ..audio.features import features_from_audio
from ..audio.loading import AudioInputError, load_audio_file
from .files import file_fingerprint, input_file_problem, list_input_files, resolve_input_file
from .types import AudioFeaturesType


class IASALoadAudio(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IASALoadAudio",
            display_name="IASA Load Audio",
            category="IASA/audio",
            description="Loads speech from ComfyUI's input folder with librosa: wav, flac, mp3, ogg, or the audio "
                        "track of a video file. Returns the standard AUDIO used by SaveAudio and CreateVideo.",
            inputs=[
                io.Combo.Input("audio", options=list_input_files(), upload=io.UploadType.audio,
                               tooltip="Audio or video file in ComfyUI's input folder (use the upload button)."),
                io.Int.Input("sample_rate", default=0, min=0, max=192000, step=1,
                             tooltip="Resample to this rate in Hz; 0 keeps the file's own rate."),
                io.Boolean.Input("mono", default=True, tooltip="Mix all channels down to one; off keeps the channels."),
                io.Float.Input("start", default=0.0, min=0.0, max=36000.0, step=0.01,
                               tooltip="Seconds to skip at the beginning."),
                io.Float.Input("duration", default=0.0, min=0.0, max=36000.0, step=0.01,
                               tooltip="Seconds to keep after start; 0 keeps everything to the end."),
            ],
            outputs=[io.Audio.Output()],
        )

    @classmethod
    def validate_inputs(cls, audio):  # only "audio": ComfyUI reports a problem once per input named here
        return input_file_problem(audio, "audio") or True

    @classmethod
    def fingerprint_inputs(cls, audio, **_):
        return file_fingerprint(audio, "audio")

    @classmethod
    def execute(cls, audio, sample_rate, mono, start, duration) -> io.NodeOutput:
        path = resolve_input_file(audio, "audio")
        try:
            return io.NodeOutput(load_audio_file(path, sample_rate=sample_rate or None, mono=mono, start=start,
                                                 duration=duration or None, label=audio))
        except AudioInputError as exc:
            raise AudioInputError(f"audio: {exc}") from None


class IASAAudioFeatures(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IASAAudioFeatures",
            display_name="IASA Audio Features",
            category="IASA/audio",
            description="Per-video-frame speech features (RMS energy, mel bands, onset strength, pitch and voicing): "
                        "exactly ceil(duration x fps) frames. Feeds IASA Audio To Pose.",
            inputs=[
                io.Audio.Input("audio", tooltip="Speech: AUDIO from IASA Load Audio or the stock LoadAudio."),
                io.Float.Input("fps", default=25.0, min=1.0, max=120.0, step=0.01,
                               tooltip="Video frame rate the features are aligned to (use the same fps in CreateVideo)."),
            ],
            outputs=[
                AudioFeaturesType.Output(display_name="features"),
                io.Int.Output(display_name="frame_count"),
                io.Float.Output(display_name="fps"),
            ],
        )

    @classmethod
    def execute(cls, audio, fps) -> io.NodeOutput:
        feats = features_from_audio(audio, fps, name="audio")
        return io.NodeOutput(feats, feats.n_frames, float(fps))
