"""Post-processing of predicted label maps: per-organ connected-component and hole-filling rules.

The FLARE 2024 pipeline (paper 002, section 3.2, "Post-processing") cleans its MRI predictions with
organ-specific rules: filling small holes, keeping only the largest connected component, and removing
regions below a volume threshold for organs such as the gallbladder and the spleen. This module applies
such rules to any nnU-Net label map. The paper's "adjusting the bounding boxes of segmented regions" is
not described in enough detail to reproduce and is left out.

Rules of one organ (:class:`OrganRules`), applied in this order:

1. ``min_volume_ml``: connected components smaller than this many millilitres (voxel count times the
   voxel volume from the spacing) are removed; 0, the default, removes nothing.
2. ``largest_component``: only the largest remaining connected component is kept (of equally large
   ones, the one whose first voxel comes first in C order).
3. ``fill_holes``: the organ's 3D holes (regions outside the organ that cannot reach the image border
   without crossing it) become the organ, but only where the label map is background 0: another organ
   inside a cavity stays as it is.

Removed voxels become 0. Organs are processed one after the other in ascending label value, each on
the label map left by the organs before it. Connected components use ``connectivity`` 26 (neighbours
across faces, edges and corners; the default) or 6 (across faces only); 2D label maps use the 2D
analogues, 8 and 4. Holes are found with the complementary connectivity for the space outside the
organ (6 for 26, 26 for 6), the usual pairing of digital topology: a wall that connects its organ,
however thinly, also closes the cavity behind it.

Configuration (a JSON object, :func:`parse_config`)::

    {"labels": {"liver": {"largest_component": true, "fill_holes": true},
                "9": {"largest_component": true, "min_volume_ml": 1.0}},
     "default": {},
     "connectivity": 26}

``labels`` keys are label names of a dataset.json or label values written as strings; ``default``
(optional, no rules when absent) is the rule set of every organ that ``labels`` does not list;
``connectivity`` (optional) is 6 or 26 (default 26). :func:`postprocess_folder` saves the effective
configuration as ``postprocessing.json`` in its output folder, keyed by label value, with every rule
written out and an informational ``label_names`` (value to name, where known); that file is a valid
configuration again, with or without a dataset.json. The ``flare`` preset (:func:`preset_config`)
holds rules for the 13 FLARE 2022-2024 abdominal organs.
"""
from __future__ import annotations

import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nnunet_uda.data.raw import atomic_folder
from nnunet_uda.domains import DomainTableError, foreground_labels
from nnunet_uda.parallel import map_cases

RULE_KEYS = ("min_volume_ml", "largest_component", "fill_holes")
CONFIG_KEYS = ("labels", "default", "connectivity", "label_names")
CONNECTIVITIES = (6, 26)
DEFAULT_CONNECTIVITY = 26
DEFAULT_FILE_ENDING = ".nii.gz"
CONFIG_FILE = "postprocessing.json"

FLARE_LABELS = {"liver": 1, "right kidney": 2, "spleen": 3, "pancreas": 4, "aorta": 5, "inferior vena cava": 6,
                "right adrenal gland": 7, "left adrenal gland": 8, "gallbladder": 9, "esophagus": 10,
                "stomach": 11, "duodenum": 12, "left kidney": 13}

# The rule for each organ and every volume threshold below are this project's choice: the paper names
# the kinds of rules (hole filling, largest component, volume thresholds for organs such as the
# gallbladder and the spleen) but gives no numbers. Solid, single organs (liver, kidneys, spleen) keep
# their largest component and get their holes filled; the spleen and the gallbladder, which can be
# missing from a scan (splenectomy, cholecystectomy), are removed altogether when what is left of them
# is too small to be real (5 ml against a normal spleen of 100-250 ml, 1 ml against a gallbladder of
# 10-50 ml). Single tubes and glands (aorta, esophagus, adrenal glands) keep their largest component;
# the stomach, whose lumen is labelled, keeps its largest component and gets its holes filled. Organs
# that predictions often split into real fragments (pancreas, inferior vena cava, duodenum) only lose
# specks under 1 ml, so that no real part of them is thrown away.
FLARE_RULES = {
    "liver": {"largest_component": True, "fill_holes": True},
    "right kidney": {"largest_component": True, "fill_holes": True},
    "spleen": {"min_volume_ml": 5.0, "largest_component": True, "fill_holes": True},
    "pancreas": {"min_volume_ml": 1.0, "fill_holes": True},
    "aorta": {"largest_component": True},
    "inferior vena cava": {"min_volume_ml": 1.0},
    "right adrenal gland": {"largest_component": True},
    "left adrenal gland": {"largest_component": True},
    "gallbladder": {"min_volume_ml": 1.0, "largest_component": True, "fill_holes": True},
    "esophagus": {"largest_component": True},
    "stomach": {"largest_component": True, "fill_holes": True},
    "duodenum": {"min_volume_ml": 1.0},
    "left kidney": {"largest_component": True, "fill_holes": True},
}
PRESETS = {"flare": (FLARE_LABELS, FLARE_RULES)}


class PostprocessingError(ValueError):
    """A post-processing configuration, input or output is unusable; the message names it and the fix."""


@dataclass(frozen=True)
class OrganRules:
    """The rules of one organ, applied in the order of the fields (see the module docstring)."""

    min_volume_ml: float = 0.0
    largest_component: bool = False
    fill_holes: bool = False

    @property
    def active(self) -> bool:
        """Whether any rule would change the organ."""
        return self.min_volume_ml > 0 or self.largest_component or self.fill_holes

    def to_json(self) -> dict:
        return {"min_volume_ml": self.min_volume_ml, "largest_component": self.largest_component,
                "fill_holes": self.fill_holes}


@dataclass(frozen=True)
class PostprocessingConfig:
    """Rules per label value, the rules of unlisted organs, the connectivity, and names for reports."""

    labels: dict[int, OrganRules] = field(default_factory=dict)
    default: OrganRules = field(default_factory=OrganRules)
    connectivity: int = DEFAULT_CONNECTIVITY
    label_names: dict[int, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        """The configuration in the JSON format of :func:`parse_config`, keyed by label value."""
        return {"labels": {str(v): r.to_json() for v, r in sorted(self.labels.items())},
                "default": self.default.to_json(), "connectivity": self.connectivity,
                "label_names": {str(v): n for v, n in sorted(self.label_names.items())}}

    def describe(self) -> str:
        """One line per listed organ and one for the default, e.g. ``9 gallbladder: min 1 ml, largest``."""
        lines = [f"{v} {self.label_names.get(v, '')}".rstrip() + f": {_describe_rules(r)}"
                 for v, r in sorted(self.labels.items())]
        lines.append(f"other organs: {_describe_rules(self.default)}")
        lines.append(f"connectivity: {self.connectivity}")
        return "\n".join(lines)


def _describe_rules(rules: OrganRules) -> str:
    parts = [f"remove components < {rules.min_volume_ml:g} ml"] if rules.min_volume_ml > 0 else []
    parts += ["keep largest component"] if rules.largest_component else []
    parts += ["fill holes"] if rules.fill_holes else []
    return ", ".join(parts) or "unchanged"


# ----------------------------------------------------------------------------------------------------------------
# configuration


def dataset_organs(dataset_json: Mapping) -> dict[str, int]:
    """Organ names to label values of a dataset.json: every label but background (0) and ``ignore``."""
    try:
        return foreground_labels(dataset_json, "the dataset.json")
    except DomainTableError as error:
        raise PostprocessingError(str(error)) from None


def parse_rules(rules: object, where: str) -> OrganRules:
    """Validate one organ's rule set (a JSON object) and return it; ``where`` names it in errors."""
    if not isinstance(rules, Mapping):
        raise PostprocessingError(f"{where} must be an object of rules ({', '.join(RULE_KEYS)}), got {rules!r}")
    unknown = sorted(str(k) for k in set(rules) - set(RULE_KEYS))
    if unknown:
        raise PostprocessingError(f"{where}: unknown rule key(s) {', '.join(unknown)}; the rules are "
                                  f"{', '.join(RULE_KEYS)}")
    volume = rules.get("min_volume_ml")
    volume = 0.0 if volume is None else volume
    if isinstance(volume, bool) or not isinstance(volume, (int, float)) or not math.isfinite(volume):
        raise PostprocessingError(f"{where}: min_volume_ml must be a number of millilitres, got {volume!r}")
    if volume < 0:
        raise PostprocessingError(f"{where}: min_volume_ml must be >= 0 millilitres (0 removes nothing), "
                                  f"got {volume!r}")
    flags = {}
    for key in ("largest_component", "fill_holes"):
        flags[key] = rules.get(key, False)
        if not isinstance(flags[key], bool):
            raise PostprocessingError(f"{where}: {key} must be true or false, got {flags[key]!r}")
    return OrganRules(min_volume_ml=float(volume), **flags)


def parse_connectivity(connectivity: object, where: str = "connectivity") -> int:
    """6 or 26, else an error."""
    if isinstance(connectivity, bool) or not isinstance(connectivity, int) or connectivity not in CONNECTIVITIES:
        raise PostprocessingError(f"{where} must be 6 (neighbours across faces) or 26 (across faces, edges and "
                                  f"corners), got {connectivity!r}")
    return connectivity


def parse_config(config: object, organs: Mapping[str, int] | None = None,
                 source: str = "the post-processing configuration") -> PostprocessingConfig:
    """Validate a configuration object (format in the module docstring) and resolve its label keys.

    ``organs`` (from :func:`dataset_organs`) resolves organ names and restricts label values to the
    dataset's organs; without it, keys must be positive label values. ``source`` names the
    configuration (e.g. its file) in errors. A ``label_names`` entry that disagrees with the dataset's
    names gives a warning (the configuration may have been written for another dataset).
    """
    if not isinstance(config, Mapping):
        raise PostprocessingError(f"{source} must be a JSON object with \"labels\" (and optionally \"default\", "
                                  f"\"connectivity\"), got {type(config).__name__}")
    unknown = sorted(str(k) for k in set(config) - set(CONFIG_KEYS))
    if unknown:
        raise PostprocessingError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys are "
                                  f"{', '.join(CONFIG_KEYS)}")
    labels = config.get("labels", {})
    if not isinstance(labels, Mapping):
        raise PostprocessingError(f"{source}: \"labels\" must be an object mapping organ names or label values "
                                  f"to rules, got {labels!r}")
    given_names = _parse_label_names(config.get("label_names", {}), source)
    names_of = {value: name for name, value in (organs or {}).items()}
    resolved: dict[int, OrganRules] = {}
    keys: dict[int, str] = {}
    for key, rules in labels.items():
        value = _resolve_label(str(key), organs, source)
        if value in resolved:
            raise PostprocessingError(f"{source}: label {value} is configured twice (\"{keys[value]}\" and "
                                      f"\"{key}\"); keep one entry")
        resolved[value], keys[value] = parse_rules(rules, f"{source}: labels[\"{key}\"]"), str(key)
    for value, name in given_names.items():
        if organs is not None and value in names_of and names_of[value] != name:
            warnings.warn(f"{source} names label {value} \"{name}\" but the dataset.json calls it "
                          f"\"{names_of[value]}\"; check that the configuration belongs to this dataset",
                          stacklevel=2)
    label_names = {value: names_of.get(value) or given_names[value] for value in resolved
                   if value in names_of or value in given_names}
    return PostprocessingConfig(labels=dict(sorted(resolved.items())),
                                default=parse_rules(config.get("default", {}), f"{source}: default"),
                                connectivity=parse_connectivity(config.get("connectivity", DEFAULT_CONNECTIVITY),
                                                                f"{source}: connectivity"),
                                label_names=label_names)


def load_config(path: str | os.PathLike, organs: Mapping[str, int] | None = None) -> PostprocessingConfig:
    """Read and validate a JSON configuration file (e.g. a saved ``postprocessing.json``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"the post-processing configuration {path} does not exist")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise PostprocessingError(f"{path} is not valid JSON ({error}); fix the file") from None
    return parse_config(config, organs, source=str(path))


def named_config(spec: str, dataset_json: Mapping) -> PostprocessingConfig:
    """The rules ``spec`` names for a dataset: a preset's name (``"flare"``) or a configuration file."""
    organs = dataset_organs(dataset_json)
    return preset_config(spec, organs) if spec in PRESETS else load_config(spec, organs)


def preset_config(name: str, organs: Mapping[str, int] | None = None) -> PostprocessingConfig:
    """The rules of a preset (``"flare"``), for a dataset's ``organs`` or, without them, its own label values.

    With ``organs``, preset organs are matched to the dataset's names by their words, ignoring case,
    order and ``_``/``-``/spaces (``kidney_right`` is ``right kidney``); preset organs the dataset
    lacks are skipped with a warning, and a dataset with none of them is an error.
    """
    if name not in PRESETS:
        raise PostprocessingError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    preset_labels, preset_rules = PRESETS[name]
    source = f"the {name} preset"
    if organs is None:
        return parse_config({"labels": {str(preset_labels[o]): r for o, r in preset_rules.items()},
                             "label_names": {str(v): o for o, v in preset_labels.items()}}, source=source)
    by_words = {_words(organ): organ for organ in organs}
    matched = {by_words[_words(o)]: rules for o, rules in preset_rules.items() if _words(o) in by_words}
    if not matched:
        raise PostprocessingError(f"none of the dataset.json's organs ({', '.join(organs)}) is an organ of {source} "
                                  f"({', '.join(preset_rules)}); write a configuration for -config instead")
    missing = [o for o in preset_rules if _words(o) not in by_words]
    if missing:
        warnings.warn(f"{source}: the dataset.json has no organ named {', '.join(missing)}; their rules are "
                      f"not applied", stacklevel=2)
    return parse_config({"labels": matched}, organs, source=source)


def _words(name: str) -> frozenset[str]:
    return frozenset(w for w in re.split(r"[\s_\-]+", name.lower()) if w)


def _resolve_label(key: str, organs: Mapping[str, int] | None, source: str) -> int:
    """The label value of a configuration key: a label value as a string, or an organ name."""
    if re.fullmatch(r"\s*[+-]?\d+\s*", key):
        value = int(key)
        if value <= 0:
            raise PostprocessingError(f"{source}: label value {value} is not an organ (0 is the background); "
                                      f"use positive label values")
        if organs is not None and value not in organs.values():
            raise PostprocessingError(f"{source}: label value {value} is not an organ of the dataset.json; "
                                      f"valid: {_organ_list(organs)}")
        return value
    if organs is None:
        raise PostprocessingError(f"{source}: the organ name \"{key}\" needs a dataset.json to be resolved "
                                  f"(-d or -dataset_json); or write its label value as a string, e.g. \"1\"")
    if key not in organs:
        raise PostprocessingError(f"{source}: unknown organ \"{key}\"; the dataset.json's organs are "
                                  f"{_organ_list(organs)}")
    return organs[key]


def _parse_label_names(names: object, source: str) -> dict[int, str]:
    if not isinstance(names, Mapping) or not all(isinstance(n, str) and re.fullmatch(r"\d+", str(v))
                                                 for v, n in names.items()):
        raise PostprocessingError(f"{source}: \"label_names\" must map label values (as strings) to names, "
                                  f"got {names!r}")
    return {int(v): n for v, n in names.items()}


def _organ_list(organs: Mapping[str, int]) -> str:
    return ", ".join(f"{name} ({value})" for name, value in sorted(organs.items(), key=lambda item: item[1]))


# ----------------------------------------------------------------------------------------------------------------
# the rules


def apply_rules(labels: np.ndarray, spacing: Sequence[float], rules: Mapping[int, OrganRules],
                connectivity: int = DEFAULT_CONNECTIVITY, default: OrganRules | None = None) -> np.ndarray:
    """A copy of the integer label map ``labels`` with each organ's rules applied (module docstring).

    ``spacing`` is the voxel size in mm along the array's axes (numpy order, z, y, x for a 3D array read
    with SimpleITK); it converts ``min_volume_ml`` into voxels. ``rules`` maps label values to their
    rules; other foreground values get ``default`` (none when ``None``). Each organ is processed inside
    its bounding box, which gives the same result as the whole map since no other voxel can belong to
    its components or holes. The dtype is kept.
    """
    labels = np.asarray(labels)
    _check_label_map(labels)
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != labels.ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise PostprocessingError(f"spacing must be {labels.ndim} positive numbers (mm per voxel along each axis "
                                  f"of the label map), got {spacing}")
    connectivity = parse_connectivity(connectivity)
    components = ndimage.generate_binary_structure(labels.ndim, 1 if connectivity == 6 else labels.ndim)
    outside = ndimage.generate_binary_structure(labels.ndim, labels.ndim if connectivity == 6 else 1)
    voxel_mm3 = math.prod(spacing)
    result = labels.copy()
    if result.size == 0:
        return result
    for index, box in enumerate(ndimage.find_objects(result)):
        organ_rules = rules.get(index + 1, default)
        if box is not None and organ_rules is not None and organ_rules.active:
            _apply_organ(result[box], index + 1, organ_rules, voxel_mm3, components, outside)
    return result


def _apply_organ(region: np.ndarray, value: int, rules: OrganRules, voxel_mm3: float,
                 components: np.ndarray, outside: np.ndarray) -> None:
    """Apply one organ's rules to ``region`` (a view of the label map around the organ) in place."""
    mask = region == value
    if rules.min_volume_ml > 0 or rules.largest_component:
        kept = _kept_components(mask, rules, voxel_mm3, components)
        region[mask & ~kept] = 0
        mask = kept
    if rules.fill_holes:
        region[ndimage.binary_fill_holes(mask, structure=outside) & (region == 0)] = value


def _kept_components(mask: np.ndarray, rules: OrganRules, voxel_mm3: float, structure: np.ndarray) -> np.ndarray:
    """The voxels of the components of ``mask`` that pass the volume threshold and the largest-component rule."""
    components, count = ndimage.label(mask, structure=structure)
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    keep = np.ones(count + 1, dtype=bool)
    keep[0] = False
    # in mm^3, with a relative slack of 1e-9 so that a component of exactly the threshold volume is kept
    # whatever the rounding of the spacing product (0.054 ml * 1000 is 54.00000000000001 in floating point)
    keep &= sizes * voxel_mm3 >= rules.min_volume_ml * 1000.0 * (1.0 - 1e-9)
    if rules.largest_component and keep.any():
        largest = int(np.argmax(np.where(keep, sizes, -1)))  # argmax: the first (lowest-numbered) of ties
        keep[:] = False
        keep[largest] = True
    return keep[components]


def _check_label_map(labels: np.ndarray) -> None:
    if not np.issubdtype(labels.dtype, np.integer):
        raise PostprocessingError(f"label maps must have an integer dtype, got {labels.dtype}; "
                                  f"write predictions as integer label files")
    if labels.ndim not in (2, 3):
        raise PostprocessingError(f"label maps must be 2D or 3D, got {labels.ndim} dimensions (shape {labels.shape})")
    if labels.size and labels.min() < 0:
        raise PostprocessingError(f"label maps must not contain negative labels, found {labels.min()}")


# ----------------------------------------------------------------------------------------------------------------
# files and folders


def postprocess_image(image: sitk.Image, config: PostprocessingConfig) -> sitk.Image:
    """``image`` (a SimpleITK label image) with ``config`` applied; geometry and pixel type are kept."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise PostprocessingError(f"label images must have one component per voxel, got "
                                  f"{image.GetNumberOfComponentsPerPixel()}")
    array = sitk.GetArrayFromImage(image)
    spacing = image.GetSpacing()[::-1]  # SimpleITK gives x, y, z; numpy arrays are z, y, x
    result = sitk.GetImageFromArray(apply_rules(array, spacing, config.labels, config.connectivity, config.default))
    result.CopyInformation(image)
    return result


def postprocess_folder(input_folder: str | os.PathLike, output_folder: str | os.PathLike,
                       config: PostprocessingConfig, file_ending: str = DEFAULT_FILE_ENDING,
                       num_processes: int = 2, overwrite: bool = False) -> dict[str, int]:
    """Post-process every label file in ``input_folder`` into ``output_folder``, all or nothing.

    The label files are the files in ``input_folder`` ending in ``file_ending``; others are ignored.
    The results and ``postprocessing.json`` (the effective ``config``) are written to a temporary
    folder beside ``output_folder`` that replaces it only once everything is written; on any error
    nothing is left behind. An existing, non-empty ``output_folder`` is an error unless ``overwrite``.
    ``num_processes`` spawned worker processes handle the files; 1 handles them in this process.
    Returns each file name with the number of voxels whose label changed.
    """
    input_folder, output_folder = Path(input_folder), Path(output_folder)
    files = _label_files(input_folder, file_ending)
    _check_output_folder(input_folder, output_folder, overwrite)
    if num_processes < 1:
        raise PostprocessingError(f"the number of processes must be at least 1, got {num_processes}")
    with atomic_folder(output_folder, overwrite=True) as tmp:
        jobs = [(str(input_folder / name), str(tmp / name), config) for name in files]
        changed = map_cases(_postprocess_file, jobs, num_processes, "post-processing")
        (tmp / CONFIG_FILE).write_text(json.dumps(config.to_json(), indent=2) + "\n")
    return dict(zip(files, changed))


def _label_files(folder: Path, file_ending: str) -> list[str]:
    if not folder.is_dir():
        raise FileNotFoundError(f"the input folder {folder} does not exist")
    files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.endswith(file_ending))
    if not files:
        raise PostprocessingError(f"the input folder {folder} has no label files ending in {file_ending}; check "
                                  f"-i, or the file_ending of the dataset.json")
    return files


def _check_output_folder(input_folder: Path, output_folder: Path, overwrite: bool) -> None:
    source, target = input_folder.resolve(), output_folder.resolve()
    if target == source:
        raise PostprocessingError(f"the output folder {output_folder} is the input folder; post-processing "
                                  f"writes a new folder: choose another -o")
    if target in source.parents:
        raise PostprocessingError(f"the output folder {output_folder} contains the input folder {input_folder} "
                                  f"and would replace it: choose another -o")
    if output_folder.exists() and not output_folder.is_dir():
        raise PostprocessingError(f"the output {output_folder} exists and is not a folder: choose another -o")
    if output_folder.is_dir() and any(output_folder.iterdir()) and not overwrite:
        raise PostprocessingError(f"the output folder {output_folder} exists and is not empty: remove it, choose "
                                  f"another -o, or pass --overwrite to replace it")


def _postprocess_file(job: tuple) -> int:
    """Worker: post-process one label file; returns the number of voxels whose label changed."""
    source, destination, config = job
    image = sitk.ReadImage(source)
    try:
        result = postprocess_image(image, config)
    except PostprocessingError as error:
        raise PostprocessingError(f"{source}: {error}") from None
    sitk.WriteImage(result, destination, useCompression=True)
    return int(np.count_nonzero(sitk.GetArrayViewFromImage(result) != sitk.GetArrayViewFromImage(image)))

