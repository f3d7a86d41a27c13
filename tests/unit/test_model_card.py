"""Model-card provenance: the recorded command is the one a person would type again."""
from __future__ import annotations

from iasa.training.model_card import REPO, provenance, training_command


def test_command_names_the_module_not_the_file():
    argv = [str(REPO / "training" / "vae_train.py"), "--data", "a b", "--dim", "32"]
    assert training_command(argv) == "python iasa_cli.py training.vae_train --data 'a b' --dim 32"
    assert training_command(argv, world_size=4).startswith("torchrun --nproc_per_node=4 iasa_cli.py training.vae_train ")
    assert training_command(["/elsewhere/x.py", "--y"]) == "python iasa_cli.py /elsewhere/x.py --y"


def test_provenance_fields():
    p = provenance(12.345, "cpu", argv=["training.teacher_train", "--steps", "3"])
    assert p["command"] == "python iasa_cli.py training.teacher_train --steps 3"
    assert p["train_seconds"] == 12.3 and p["world_size"] == 1 and "CPU" in p["hardware"]
    assert set(p["versions"]) == {"python", "torch", "comfyui"} and p["versions"]["comfyui"] != "unknown"
    assert len(p["date"]) == 10
