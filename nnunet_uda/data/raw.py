"""Reading and writing nnU-Net raw datasets: locating them, and writing them all or nothing."""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def raw_root() -> Path:
    root = os.environ.get("nnUNet_raw")
    if not root:
        raise RuntimeError("nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw (see nnU-Net's "
                           "documentation on setting up paths)")
    return Path(root)


def dataset_folder_name(dataset_id: int, name: str) -> str:
    return f"Dataset{int(dataset_id):03d}_{name}"


def find_raw_dataset(dataset: str | int | Path, root: Path | None = None) -> Path:
    """The raw folder of ``dataset``: an id (``5``, ``"005"``), a full name or a path; names and ids are looked up in
    ``root`` (default ``$nnUNet_raw``)."""
    if isinstance(dataset, (str, Path)) and os.path.isdir(dataset):
        return Path(dataset)
    root = Path(root) if root is not None else raw_root()
    try:
        prefix = f"Dataset{int(dataset):03d}_"
        matches = sorted(p for p in root.glob(prefix + "*") if p.is_dir()) if root.is_dir() else []
    except ValueError:
        matches = [root / str(dataset)] if (root / str(dataset)).is_dir() else []
    if len(matches) != 1:
        found = "none" if not matches else ", ".join(p.name for p in matches)
        raise FileNotFoundError(f"dataset {dataset}: expected exactly one folder in {root}, found {found}")
    return matches[0]


def datasets_using_id(root: Path, dataset_id: int, final: Path) -> list[str]:
    """The dataset folders in ``root`` other than ``final`` that hold ``dataset_id`` (nnU-Net needs unique ids)."""
    return sorted(p.name for p in Path(root).glob(f"Dataset{int(dataset_id):03d}_*") if p.is_dir() and p != final)


def image_file(folder: Path, case: str, ending: str, channel: int = 0) -> Path:
    """nnU-Net's name of one channel of a case's image in an images folder: ``<case>_0000<ending>``."""
    return Path(folder) / f"{case}_{channel:04d}{ending}"


def load_dataset_json(folder: Path) -> dict:
    path = Path(folder) / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: every nnU-Net raw dataset needs a dataset.json")
    with open(path) as f:
        return json.load(f)


def save_json(obj, path: Path) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)


@contextmanager
def atomic_folder(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; move it to ``final`` only if the block succeeds.

    On any exception the temporary folder is removed, so a reader never sees a half-written
    dataset or report. An existing ``final`` is an error unless ``overwrite``.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists; remove it or choose another dataset id/output")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.incomplete-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
