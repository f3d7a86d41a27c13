"""Input files for nodes: only from ComfyUI's input folder, never outside it.

Messages name the node input and the file as the user gave it, never a server path (API clients see them)."""
from __future__ import annotations

import hashlib
import os

import folder_paths

AUDIO_VIDEO = ("audio", "video")


def list_input_files(content_types: tuple[str, ...] = AUDIO_VIDEO, suffixes: tuple[str, ...] = ()) -> list[str]:
    """Files of the input folder (sub-folders included) whose MIME type is one of ``content_types`` or,
    when ``suffixes`` is given, whose name ends with one of them (case-insensitive, e.g. ``(".json",)``)."""
    root = folder_paths.get_input_directory()
    found = []
    for dirpath, _dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        found += [f if rel == "." else os.path.join(rel, f) for f in files]
    if suffixes:
        return sorted(f for f in found if f.lower().endswith(tuple(s.lower() for s in suffixes)))
    return sorted(folder_paths.filter_files_content_types(found, list(content_types)))


def input_file_problem(name: str, input_name: str) -> str | None:
    """Why ``name`` cannot be used as an input file, or None when it is a file inside the input folder."""
    return _input_path_problem(name, input_name, folder=False)


def input_folder_problem(name: str, input_name: str) -> str | None:
    """Why ``name`` cannot be used as an input folder, or None when it is a folder inside the input folder."""
    return _input_path_problem(name, input_name, folder=True)


def list_input_folders(max_depth: int = 3) -> list[str]:
    """Folders inside the input folder (relative names, sub-folders up to ``max_depth`` levels)."""
    root = folder_paths.get_input_directory()
    found = []
    for dirpath, dirs, _files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        depth = 0 if rel == "." else rel.count(os.sep) + 1
        if depth >= max_depth:
            dirs[:] = []
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [d if rel == "." else os.path.join(rel, d) for d in dirs]
    return sorted(found)


def _input_path_problem(name: str, input_name: str, folder: bool) -> str | None:
    what = "folder" if folder else "file"
    if not isinstance(name, str) or not name.strip():
        return (f"{input_name}: no {what} chosen; " + ("pick a folder inside ComfyUI's input folder" if folder else
                                                       "upload a file or pick one from ComfyUI's input folder"))
    if any(ord(c) < 32 for c in name):
        return (f"{input_name}: the {what} name {name!r} contains a control character (such as a NUL byte), which "
                f"no {what} name in ComfyUI's input folder can hold; choose the {what} by its plain name")
    rel, base = folder_paths.annotated_filepath(name)
    input_dir = os.path.realpath(folder_paths.get_input_directory())
    if base is not None and os.path.realpath(base) != input_dir:
        return (f"{input_name}: '{name}' points at another ComfyUI folder; this node reads only from ComfyUI's "
                "input folder: upload the file there")
    full = os.path.realpath(os.path.join(input_dir, rel))
    if os.path.isabs(rel) or not full.startswith(input_dir + os.sep):
        return (f"{input_name}: '{name}' is outside ComfyUI's input folder and was refused; "
                f"upload the {what} and choose it by its name inside that folder")
    if folder:
        if not os.path.isdir(full):
            return f"{input_name}: folder '{name}' not found in ComfyUI's input folder"
        return None
    if not os.path.isfile(full):
        return (f"{input_name}: file '{name}' not found in ComfyUI's input folder; "
                "upload it with the node's upload button or copy it there")
    return None


def _resolve_input_path(name: str, input_name: str, folder: bool) -> str:
    problem = _input_path_problem(name, input_name, folder)
    if problem:
        raise ValueError(problem)
    rel, _ = folder_paths.annotated_filepath(name)
    return os.path.realpath(os.path.join(folder_paths.get_input_directory(), rel))


def resolve_input_file(name: str, input_name: str) -> str:
    """Absolute path of ``name`` inside the input folder; raises ValueError naming the input otherwise."""
    return _resolve_input_path(name, input_name, folder=False)


def resolve_input_folder(name: str, input_name: str) -> str:
    """Absolute path of folder ``name`` inside the input folder; raises ValueError naming the input otherwise."""
    return _resolve_input_path(name, input_name, folder=True)


def file_fingerprint(name: str, input_name: str) -> str:
    """Content hash of an input file for ``fingerprint_inputs`` (re-run when the file changes); the
    problem text itself for a file that cannot be used, so that the node runs and reports it clearly."""
    problem = input_file_problem(name, input_name)
    if problem:
        return problem
    with open(resolve_input_file(name, input_name), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
