"""harness/picture.py: README stills come from the real frames of a video, in the asked order."""
from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image

from iasa.harness.picture import main

COLOURS = [(250, 10, 10), (10, 250, 10), (10, 10, 250), (240, 240, 20)]


def _video(path, size=64):
    with av.open(str(path), "w") as box:
        st = box.add_stream("libx264", rate=25)
        st.width = st.height = size
        st.pix_fmt = "yuv420p"
        st.options = {"crf": "0"}
        for c in COLOURS:
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), c, np.uint8), format="rgb24")
            for packet in st.encode(frame):
                box.mux(packet)
        for packet in st.encode():
            box.mux(packet)
    return path


def test_strip_holds_the_input_then_the_chosen_frames(tmp_path):
    first = tmp_path / "in.png"
    Image.fromarray(np.full((32, 48, 3), 128, np.uint8)).save(first)
    out = main([str(_video(tmp_path / "v.mp4")), str(tmp_path / "s.jpg"), "--frames", "2", "0",
                "--first", str(first), "--height", "64"])
    im = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert im.shape == (64, 96 + 64 + 64, 3)
    centre = lambda x: im[32, x]  # noqa: E731
    assert np.abs(centre(48) - 128).max() < 12
    assert np.abs(centre(96 + 32) - COLOURS[2]).max() < 24
    assert np.abs(centre(96 + 64 + 32) - COLOURS[0]).max() < 24


def test_a_frame_past_the_end_is_named(tmp_path):
    with pytest.raises(ValueError, match="no frame 9"):
        main([str(_video(tmp_path / "v.mp4")), str(tmp_path / "s.jpg"), "--frames", "1", "9"])
