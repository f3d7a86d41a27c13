"""scripts/gpu_env.sh: the ComfyUI tree carried to the GPU machine is unpacked once per tarball, also when several
pipelines source it at the same moment (two once raced: one removed the tree the other was unpacking)."""
from __future__ import annotations

import pathlib
import subprocess
import tarfile

REPO = pathlib.Path(__file__).resolve().parents[2]


def _tarball(root: pathlib.Path, marker: str) -> None:
    src = root / "src"
    (src / "comfy").mkdir(parents=True, exist_ok=True)
    for i in range(200):   # enough files that an unpack takes a moment
        (src / "comfy" / f"m{i}.py").write_text(f"# {marker} {i}\n" * 50)
    (src / "comfy" / "marker.txt").write_text(marker)
    (root / ".dev" / "gpu").mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / ".dev" / "gpu" / "comfy.tar.gz", "w:gz") as tar:
        tar.add(src / "comfy", arcname="comfy")


def _source_concurrently(root: pathlib.Path, unpack: pathlib.Path, n: int) -> list[list[str]]:
    """Each of ``n`` shells sourcing gpu_env at once: [the unpacked tree's marker, its file count]."""
    script = (f'source "{REPO}/scripts/gpu_env.sh"; unset COMFYUI_DIR; gpu_env; '
              'echo "$(cat "$COMFYUI_DIR/comfy/marker.txt")"; ls "$COMFYUI_DIR/comfy" | wc -l')
    env = {"PATH": "/usr/bin:/bin", "IASA_COMFY_UNPACK_DIR": str(unpack), "HOME": str(root)}
    procs = [subprocess.Popen(["bash", "-c", script], cwd=root, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(n)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(out.split())
    return outs


def test_concurrent_pipelines_all_see_the_whole_tree(tmp_path):
    unpack = tmp_path / "unpacked"
    _tarball(tmp_path, "first")
    assert _source_concurrently(tmp_path, unpack, 4) == [["first", "201"]] * 4
    _tarball(tmp_path, "second")          # a new tarball replaces the tree, once
    assert _source_concurrently(tmp_path, unpack, 3) == [["second", "201"]] * 3
    assert not (tmp_path / "unpacked.new").exists()


def test_wait_without_the_starts_work_folder_stops_at_once_and_says_why(tmp_path):
    """`VAR=... start && wait` gives the variables to `start` only: `wait` then looked in the default folder and
    followed nothing; now it names the log it did not find and how to agree with `start`."""
    for script, log in (("distill_iasa_mini_gpu.sh", "distill.log"), ("train_iasa_mini_gpu.sh", "pipeline.log")):
        work = tmp_path / script
        done = subprocess.run(["bash", str(REPO / "scripts" / script), "wait", "30"], cwd=REPO, capture_output=True,
                              text=True, timeout=20, env={"PATH": "/usr/bin:/bin", "IASA_V2_WORK": str(work)})
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"no log {work}/{log}" in done.stderr and "export" in done.stderr
