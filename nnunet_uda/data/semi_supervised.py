"""Semi-supervised raw datasets: few labeled and many unlabeled training cases of one domain.

- :func:`make_semi_supervised_dataset` turns a fully labeled nnU-Net raw dataset into a new one in
  which a seeded random choice of training cases keeps its labels and the others become unlabeled
  (label maps of nnU-Net's ignore label; their true labels kept in ``labelsTr_reference``);
- :func:`add_unlabeled_cases` adds a folder of images to a dataset as unlabeled training cases.

Both write the domain table (:mod:`nnunet_uda.domains`); see docs/datasets.md, section
"Semi-supervised datasets".
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_uda.data.raw import (atomic_folder, dataset_folder_name, datasets_using_id, find_raw_dataset,
                                 load_dataset_json, raw_root, save_json)
from nnunet_uda.domains import TABLE_KEY, DomainTable, DomainTableError
from nnunet_uda.intensity import CT_WINDOW, harmonize

SPLIT_FILE = "semi_supervised.json"
"""Written beside dataset.json by :func:`make_semi_supervised_dataset`: the seed and the split."""

REFERENCE_FOLDER = "labelsTr_reference"
"""True labels of the training cases made unlabeled (for scoring), as the phantom keeps them."""

NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+")


class SemiSupervisedDatasetError(ValueError):
    """A semi-supervised dataset cannot be written; the message names the file or case and the fix."""


@dataclass(frozen=True)
class LabeledSplit:
    """Which training cases keep their labels; ``fraction`` is the labeled share asked for (or, when a
    count was asked for, the share it gives)."""
    labeled: list[str]
    unlabeled: list[str]
    seed: int
    fraction: float

    def to_json(self) -> dict:
        return {"seed": self.seed, "fraction": self.fraction, "n_labeled": len(self.labeled),
                "n_unlabeled": len(self.unlabeled), "labeled": self.labeled, "unlabeled": self.unlabeled}


# --------------------------------------------------------------------------------------- the split
def choose_labeled(cases: Iterable[str], *, fraction: float | None = None, n_labeled: int | None = None,
                   seed: int = 0) -> LabeledSplit:
    """A seeded random choice of the cases that keep their labels: ``n_labeled`` of them, or
    round(``fraction`` * n), at least 1 and at most n - 1. The result depends only on the set of
    case names and ``seed``."""
    cases = sorted(set(cases))
    n = len(cases)
    if (fraction is None) == (n_labeled is None):
        raise SemiSupervisedDatasetError("give exactly one of a labeled fraction (--labeled) or a labeled count "
                                         "(--n_labeled)")
    if n < 2:
        raise SemiSupervisedDatasetError(f"the dataset has {n} training case(s); a semi-supervised dataset needs at "
                                         f"least one labeled and one unlabeled case, so at least 2")
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
            raise SemiSupervisedDatasetError(f"the labeled fraction must lie between 0 and 1 (exclusive), got "
                                             f"{fraction!r}; e.g. --labeled 0.25 keeps a quarter of the labels")
        count = min(max(int(round(fraction * n)), 1), n - 1)
    else:
        if isinstance(n_labeled, bool) or not isinstance(n_labeled, (int, np.integer)) or not 1 <= n_labeled <= n - 1:
            raise SemiSupervisedDatasetError(f"the number of labeled cases must be from 1 to {n - 1} (the dataset has "
                                             f"{n} training cases), got {n_labeled!r}")
        count = int(n_labeled)
        fraction = count / n
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SemiSupervisedDatasetError(f"the seed must be an integer >= 0, got {seed!r}")
    chosen = set(np.random.default_rng(int(seed)).permutation(n)[:count].tolist())
    labeled = [c for i, c in enumerate(cases) if i in chosen]
    unlabeled = [c for i, c in enumerate(cases) if i not in chosen]
    return LabeledSplit(labeled, unlabeled, int(seed), float(fraction))


def default_name(source_name: str, split: LabeledSplit) -> str:
    """``<Name>Semi<percent>``: the labeled share in whole percent (1 to 99)."""
    return f"{source_name}Semi{min(max(int(round(100.0 * split.fraction)), 1), 99)}"


# --------------------------------------------------------------------------------------- labels and domains
def labels_with_ignore(dataset_json: Mapping, where: str) -> tuple[dict, int]:
    """``dataset_json["labels"]`` with an ``"ignore"`` label (highest label + 1, unless the dataset
    declares one) and its value."""
    labels = dict(dataset_json.get("labels", {}))
    if not labels:
        raise SemiSupervisedDatasetError(f"{where} has no \"labels\" entry; an nnU-Net dataset.json declares its "
                                         f"labels, e.g. {{\"background\": 0, \"liver\": 1}}")
    for name, value in labels.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise SemiSupervisedDatasetError(f"{where}: label \"{name}\" has value {value!r}; semi-supervised "
                                             f"datasets support plain integer labels only (no region-based "
                                             f"training)")
    if "ignore" not in labels:
        labels["ignore"] = max(labels.values()) + 1
    return labels, labels["ignore"]


def default_domain(dataset_json: Mapping, name: str | None = None) -> tuple[str, dict]:
    """A domain for a dataset without a domain table: named after channel 0 (or ``name``), modality
    CT if channel 0 is named CT (case-insensitively, as nnU-Net picks its CT normalisation), else MR.
    Its images are stored as acquired (``"harmonized": false``)."""
    channel = str(dataset_json.get("channel_names", {}).get("0", "image"))
    modality = "CT" if channel.strip().casefold() == "ct" else "MR"
    if name is None:
        name = re.sub(r"[^A-Za-z0-9_-]+", "_", channel.strip()).strip("_") or "image"
    return name, {"modality": modality, "annotated_labels": "all", "harmonized": False}


def _parse_table(dataset_json: Mapping, where: str) -> DomainTable:
    try:
        return DomainTable.from_dataset_json(dataset_json, where=where)
    except DomainTableError as error:
        raise SemiSupervisedDatasetError(str(error)) from None


# --------------------------------------------------------------------------------------- files
def _locate(dataset, root: Path) -> Path:
    """The raw folder of ``dataset`` (an id, a folder name or a path) in ``root``."""
    try:
        folder = find_raw_dataset(dataset, root)
    except FileNotFoundError as error:
        raise SemiSupervisedDatasetError(f"{error}; check the id and $nnUNet_raw") from None
    if not (folder / "dataset.json").is_file():
        raise SemiSupervisedDatasetError(f"{folder / 'dataset.json'} does not exist; every nnU-Net raw dataset "
                                         f"needs one")
    return folder


def _root(folder: str | Path | None) -> Path:
    if folder is not None:
        return Path(folder)
    try:
        return raw_root()
    except RuntimeError as error:
        raise SemiSupervisedDatasetError(str(error)) from None


def _file_ending(dataset_json: Mapping, where: str) -> str:
    if "dataset" in dataset_json:
        raise SemiSupervisedDatasetError(f"{where} lists its files in a \"dataset\" entry; only the imagesTr/labelsTr "
                                         f"folder layout is supported: copy the files into that layout first")
    ending = dataset_json.get("file_ending")
    if not isinstance(ending, str) or not ending:
        raise SemiSupervisedDatasetError(f"{where} has no \"file_ending\"; add it, e.g. \"file_ending\": \".nii.gz\"")
    return ending


def image_cases(folder: Path, ending: str) -> dict[str, dict[int, Path]]:
    """The cases of an nnU-Net images folder: case -> channel -> file (``<case>_XXXX<ending>``)."""
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(ending) + "$")
    cases: dict[str, dict[int, Path]] = {}
    for path in sorted(Path(folder).glob("*" + ending)) if Path(folder).is_dir() else []:
        match = pattern.match(path.name)
        if match:
            cases.setdefault(match.group(1), {})[int(match.group(2))] = path
    return cases


def _complete_cases(folder: Path, ending: str, n_channels: int) -> dict[str, list[Path]]:
    """Every case of ``folder`` with its channel files in order; a missing channel is an error."""
    out = {}
    for case, channels in image_cases(folder, ending).items():
        missing = [f"{case}_{c:04d}{ending}" for c in range(n_channels) if c not in channels]
        if missing:
            raise SemiSupervisedDatasetError(f"{folder.name}/{missing[0]} is missing: the dataset has {n_channels} "
                                             f"channel(s) and case {case} lacks it; add the file or remove the case")
        out[case] = [channels[c] for c in range(n_channels)]
    return out


def link_or_copy(source: Path, destination: Path) -> None:
    """A hard link where the file system allows one, a copy otherwise."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _header(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise SemiSupervisedDatasetError(f"{path}: cannot read the image (not a readable image file); replace or "
                                         f"remove it") from None
    return reader


def write_ignore_map(geometry_of: Path, destination: Path, ignore: int) -> None:
    """A label file that is entirely ``ignore``, on the grid (size, spacing, origin, direction) of
    the image ``geometry_of``."""
    header = _header(geometry_of)
    dtype = np.uint8 if ignore <= np.iinfo(np.uint8).max else np.uint16
    label = sitk.GetImageFromArray(np.full(tuple(reversed(header.GetSize())), ignore, dtype=dtype))
    label.SetSpacing(header.GetSpacing())
    label.SetOrigin(header.GetOrigin())
    label.SetDirection(header.GetDirection())
    sitk.WriteImage(label, str(destination), True)


# --------------------------------------------------------------------------------------- command 1
def make_semi_supervised_dataset(source, dataset_id: int, *, fraction: float | None = None,
                                 n_labeled: int | None = None, seed: int = 0, name: str | None = None,
                                 overwrite: bool = False, raw_root: str | Path | None = None,
                                 progress: bool = False) -> Path:
    """Write ``Dataset<dataset_id>_<name>``: the fully labeled raw dataset ``source`` (id, name or
    folder) with only a seeded choice of training cases labeled (:func:`choose_labeled`). Returns its
    folder; raises :class:`SemiSupervisedDatasetError`, leaving nothing behind."""
    root = _root(raw_root)
    src = _locate(source, root)
    where = str(src / "dataset.json")
    source_json = load_dataset_json(src)
    ending = _file_ending(source_json, where)
    n_channels = max(len(source_json.get("channel_names", {})), 1)
    cases = _complete_cases(src / "imagesTr", ending, n_channels)
    if not cases:
        raise SemiSupervisedDatasetError(f"{src / 'imagesTr'} holds no training images named <case>_0000{ending}")
    for case, files in cases.items():
        if not (src / "labelsTr" / f"{case}{ending}").is_file():
            raise SemiSupervisedDatasetError(f"imagesTr/{files[0].name} of {src.name} has no label file "
                                             f"labelsTr/{case}{ending}; the source must be fully labeled: add the "
                                             f"label file or remove the case")
    labels, ignore = labels_with_ignore(source_json, where)
    domain, domain_spec, old_entries, old_tests = _source_domain(source_json, where)
    split = choose_labeled(cases, fraction=fraction, n_labeled=n_labeled, seed=seed)

    source_name = src.name.split("_", 1)[1] if re.match(r"Dataset\d{3}_.", src.name) else src.name
    name = name or default_name(source_name, split)
    final = _new_dataset_folder(root, dataset_id, name, src, overwrite)
    tests = _complete_cases(src / "imagesTs", ending, n_channels)

    table = {"domains": {domain: domain_spec}, "target": [domain], "cases": {}, "test_cases": {}}
    labeled = set(split.labeled)
    for case in cases:
        entry = {k: v for k, v in old_entries.get(case, {}).items() if k in ("subject", "annotated_labels")}
        if case in labeled:
            table["cases"][case] = {"domain": domain, "labels": "ground_truth", **entry}
        else:
            table["cases"][case] = {"domain": domain, "labels": "none",
                                    **{k: v for k, v in entry.items() if k == "subject"}}
    for case in tests:
        extra = {k: v for k, v in old_tests.get(case, {}).items() if k == "annotated_labels"}
        table["test_cases"][case] = {"domain": domain, **extra}
    content = copy.deepcopy(source_json)
    content.update(name=name, labels=labels, numTraining=len(cases))
    content[TABLE_KEY] = table
    _parse_table(content, str(final / "dataset.json"))

    with atomic_folder(final, overwrite=overwrite) as tmp:
        for sub in ("imagesTr", "labelsTr", REFERENCE_FOLDER):
            (tmp / sub).mkdir()
        unlabeled = set(split.unlabeled)
        for case, files in tqdm(cases.items(), desc="semi-supervised dataset", unit="case", disable=not progress):
            for path in files:
                link_or_copy(path, tmp / "imagesTr" / path.name)
            label = src / "labelsTr" / f"{case}{ending}"
            if case in unlabeled:
                write_ignore_map(label, tmp / "labelsTr" / label.name, ignore)
                link_or_copy(label, tmp / REFERENCE_FOLDER / label.name)
            else:
                link_or_copy(label, tmp / "labelsTr" / label.name)
        for sub in ("imagesTs", "labelsTs"):
            if (src / sub).is_dir():
                (tmp / sub).mkdir()
                for path in sorted((src / sub).glob("*" + ending)):
                    link_or_copy(path, tmp / sub / path.name)
        save_json(content, tmp / "dataset.json")
        save_json({"source": src.name, **split.to_json()}, tmp / SPLIT_FILE)
    return final


def _source_domain(source_json: Mapping, where: str) -> tuple[str, dict, dict, dict]:
    """The one domain of the new dataset (the source's own, or one named after channel 0), its
    description, and the source's training and test case entries."""
    if TABLE_KEY not in source_json:
        return (*default_domain(source_json), {}, {})
    table = _parse_table(source_json, where)
    if len(table.domains) != 1:
        raise SemiSupervisedDatasetError(f"{where}: the domain table has {len(table.domains)} domains "
                                         f"({', '.join(table.domains)}); a semi-supervised dataset has one: make a "
                                         f"dataset of one domain's cases first (or drop its \"{TABLE_KEY}\" entry if "
                                         f"they are all one modality)")
    not_labeled = [c for c, e in table.cases.items() if e.labels != "ground_truth"]
    if not_labeled:
        raise SemiSupervisedDatasetError(f"{where}: case {not_labeled[0]} has labels "
                                         f"\"{table.cases[not_labeled[0]].labels}\"; the source of a semi-supervised "
                                         f"dataset must be fully labeled (every case \"ground_truth\")")
    stored = source_json[TABLE_KEY]
    domain = table.domain_names[0]
    spec = copy.deepcopy(stored["domains"][domain])
    cases = {c: e if isinstance(e, Mapping) else {"domain": e} for c, e in stored.get("cases", {}).items()}
    tests = {c: e if isinstance(e, Mapping) else {"domain": e} for c, e in stored.get("test_cases", {}).items()}
    return domain, spec, cases, tests


def _new_dataset_folder(root: Path, dataset_id: int, name: str, source: Path, overwrite: bool) -> Path:
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, (int, np.integer)) or not 1 <= dataset_id <= 999:
        raise SemiSupervisedDatasetError(f"the new dataset id must be an integer from 1 to 999, got {dataset_id!r}")
    if not NAME_PATTERN.fullmatch(name):
        raise SemiSupervisedDatasetError(f"dataset name {name!r}: use letters, digits, '_' or '-' only (--name)")
    final = root / dataset_folder_name(dataset_id, name)
    if final.resolve() == source.resolve():
        raise SemiSupervisedDatasetError(f"the new dataset {final.name} would replace its source; choose another id")
    others = datasets_using_id(root, dataset_id, final)
    if others:
        raise SemiSupervisedDatasetError(f"dataset id {dataset_id} is already used by {', '.join(others)} in {root}; "
                                         f"choose another id (nnU-Net needs unique ids)")
    if final.exists() and not overwrite:
        raise SemiSupervisedDatasetError(f"{final} already exists; pass --overwrite to replace it or choose another "
                                         f"id or --name")
    return final


# --------------------------------------------------------------------------------------- command 2
def unlabeled_inputs(folder: Path, endings: Sequence[str]) -> dict[str, Path]:
    """The images of ``folder`` by case name: ``X_0000<ending>`` or ``X<ending>`` give ``X``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SemiSupervisedDatasetError(f"{folder} is not a folder; give the folder of unlabeled images with -i")
    endings = sorted(set(endings), key=len, reverse=True)
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        ending = next((e for e in endings if path.name.endswith(e)), None)
        if ending is None or not path.is_file():
            continue
        stem = path.name[: -len(ending)]
        match = re.fullmatch(r"(.+)_(\d{4})", stem)
        if match:
            if match.group(2) != "0000":
                raise SemiSupervisedDatasetError(f"{path}: channel {int(match.group(2))} of case {match.group(1)}; "
                                                 f"only single-channel images are supported (X_0000{ending} or "
                                                 f"X{ending}): remove the other channels")
            stem = match.group(1)
        if stem in found:
            raise SemiSupervisedDatasetError(f"{found[stem].name} and {path.name} in {folder} are both case {stem}; "
                                             f"remove one")
        found[stem] = path
    if not found:
        raise SemiSupervisedDatasetError(f"{folder} holds no images (*{', *'.join(endings)})")
    return found


def add_unlabeled_cases(dataset, folder: str | Path, *, domain: str | None = None, harmonize: bool | None = None,
                        prefix: str = "unl_", raw_root: str | Path | None = None, progress: bool = False) -> list[str]:
    """Add every image of ``folder`` to ``dataset`` as an unlabeled training case ``<prefix><X>``
    (image, ignore-only label map, domain-table entry, ``numTraining``); returns the new case names.

    ``domain``: default the dataset's only domain, else its only target domain. ``harmonize``: True
    harmonises the images by the domain's modality, False copies them as they are, None does what
    the domain table says (harmonised unless the domain is marked ``"harmonized": false``; a
    dataset without a table is not harmonised). New files are written beside the dataset first and
    dataset.json is replaced last; on any error the dataset is left as it was."""
    root = _root(raw_root)
    raw = _locate(dataset, root)
    where = str(raw / "dataset.json")
    dataset_json = load_dataset_json(raw)
    ending = _file_ending(dataset_json, where)
    channels = dataset_json.get("channel_names", {})
    if len(channels) != 1:
        raise SemiSupervisedDatasetError(f"{where} has {len(channels)} channels ({', '.join(map(str, channels.values()))}"
                                         f"); only single-channel datasets are supported")
    labels, ignore = labels_with_ignore(dataset_json, where)
    existing = image_cases(raw / "imagesTr", ending)
    inputs = unlabeled_inputs(Path(folder), (".nii.gz", ending))

    if TABLE_KEY in dataset_json:
        table = _parse_table(dataset_json, where)
        domain = _choose_domain(table, domain, where)
        table_json = copy.deepcopy(dataset_json[TABLE_KEY])
        auto_harmonize = table.domains[domain].harmonized
        modality = table.domains[domain].modality
        taken = set(existing) | set(table.cases) | set(table.test_cases)
    else:
        domain, spec = default_domain(dataset_json, domain)
        tests = image_cases(raw / "imagesTs", ending)
        table_json = {"domains": {domain: spec}, "target": [domain],
                      "cases": {c: {"domain": domain, "labels": "ground_truth"} for c in existing},
                      "test_cases": {c: {"domain": domain} for c in tests}}
        auto_harmonize, modality = False, spec["modality"]
        taken = set(existing) | set(tests)
    taken |= {p.name[: -len(ending)] for p in (raw / "labelsTr").glob("*" + ending)} if (raw / "labelsTr").is_dir() \
        else set()
    do_harmonize = auto_harmonize if harmonize is None else bool(harmonize)

    new_cases = {f"{prefix}{stem}": path for stem, path in inputs.items()}
    clashes = sorted(c for c in new_cases if c in taken)
    if clashes:
        raise SemiSupervisedDatasetError(f"case {clashes[0]} (from {new_cases[clashes[0]].name}) already exists in "
                                         f"{raw.name}" + (f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else "")
                                         + "; rename the image or choose another --prefix")
    dimension = _header(next(iter(existing.values()))[0]).GetDimension() if existing else None
    for path in new_cases.values():
        header = _header(path)
        if header.GetNumberOfComponents() != 1:
            raise SemiSupervisedDatasetError(f"{path}: {header.GetNumberOfComponents()} components per voxel; only "
                                             f"single-channel images are supported")
        if dimension is not None and header.GetDimension() != dimension:
            raise SemiSupervisedDatasetError(f"{path}: a {header.GetDimension()}D image, but the images of {raw.name} "
                                             f"are {dimension}D")

    for case in new_cases:
        table_json["cases"][case] = {"domain": domain, "labels": "none"}
    content = copy.deepcopy(dataset_json)
    content.update(labels=labels, numTraining=len(existing) + len(new_cases))
    content[TABLE_KEY] = table_json
    _parse_table(content, where)

    tmp = raw.parent / f".{raw.name}.add_unlabeled-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for sub in ("imagesTr", "labelsTr"):
            (tmp / sub).mkdir(parents=True)
        for case, path in tqdm(new_cases.items(), desc="adding unlabeled cases", unit="case", disable=not progress):
            image = tmp / "imagesTr" / f"{case}_0000{ending}"
            _write_image(path, image, modality if do_harmonize else None)
            write_ignore_map(image, tmp / "labelsTr" / f"{case}{ending}", ignore)
        save_json(content, tmp / "dataset.json")
        _commit(tmp, raw)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return list(new_cases)


def _choose_domain(table: DomainTable, domain: str | None, where: str) -> str:
    if domain is not None:
        if domain not in table.domains:
            raise SemiSupervisedDatasetError(f"{where}: there is no domain \"{domain}\"; the domains are "
                                             f"{', '.join(table.domains)} (--domain)")
        return domain
    if len(table.domains) == 1:
        return table.domain_names[0]
    if len(table.target) == 1:
        return table.target[0]
    raise SemiSupervisedDatasetError(f"{where} has domains {', '.join(table.domains)} and target domains "
                                     f"{', '.join(table.target)}: name the domain of the new cases with --domain")


def _write_image(source: Path, destination: Path, modality: str | None) -> None:
    """Copy ``source`` to ``destination`` (converting the file format if the endings differ), or,
    with a ``modality``, write it harmonised by that modality's rule."""
    if modality is None and _same_format(source, destination):
        link_or_copy(source, destination)
        return
    try:
        image = sitk.ReadImage(str(source))
    except RuntimeError:
        raise SemiSupervisedDatasetError(f"{source}: cannot read the image (damaged or not an image); replace or "
                                         f"remove it") from None
    if modality is not None:
        values = sitk.GetArrayFromImage(image)
        if modality.upper() == "CT" and values.size and values.min() >= -1.0 - 1e-3 and values.max() <= 1.0 + 1e-3:
            raise SemiSupervisedDatasetError(
                f"{source}: its values lie in [-1, 1], so it looks harmonised already; harmonising CT again "
                f"(clipping to {list(CT_WINDOW)} HU) would flatten it: add it with --no_harmonize")
        harmonised = sitk.GetImageFromArray(harmonize(values, modality))
        harmonised.CopyInformation(image)
        image = harmonised
    sitk.WriteImage(image, str(destination), True)


def _same_format(a: Path, b: Path) -> bool:
    def ending(path: Path) -> str:
        return "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    return ending(a) == ending(b)


def _commit(tmp: Path, raw: Path) -> None:
    """Move the new files of ``tmp`` into ``raw``, then replace dataset.json; undo the moves if one fails."""
    moved: list[Path] = []
    try:
        for sub in ("imagesTr", "labelsTr"):
            (raw / sub).mkdir(exist_ok=True)
            for path in sorted((tmp / sub).iterdir()):
                target = raw / sub / path.name
                if target.exists():
                    raise SemiSupervisedDatasetError(f"{target} appeared while the cases were written; nothing was "
                                                     f"added, run the command again")
                os.replace(path, target)
                moved.append(target)
        os.replace(tmp / "dataset.json", raw / "dataset.json")
    except BaseException:
        for path in moved:
            path.unlink(missing_ok=True)
        raise


def read_split(folder: Path) -> dict:
    """The ``semi_supervised.json`` of a dataset written by :func:`make_semi_supervised_dataset`."""
    return json.loads((Path(folder) / SPLIT_FILE).read_text())
