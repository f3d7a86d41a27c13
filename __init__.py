"""IASA for ComfyUI: input-aware sparse attention for real-time co-speech video.

ComfyUI loads this file; outside ComfyUI (tools, unit tests) the library packages import on their own
and this file defines only WEB_DIRECTORY.
"""
# Frontend extension (web/*.js): the audio player that IASA Load Audio's upload button needs.
WEB_DIRECTORY = "./web"

try:
    from comfy_api.latest import ComfyExtension  # noqa: F401  (present only inside ComfyUI)
except ImportError:  # imported outside ComfyUI
    comfy_entrypoint = None
else:
    from .nodes import IASAExtension

    async def comfy_entrypoint() -> IASAExtension:
        return IASAExtension()
