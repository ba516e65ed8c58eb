"""Write the three MONAI bundles (``bundles/<name>/``) from one template and the dataset specs.

The bundles differ only in dataset values (classes, raw label values, spacing, crop size, default
folders, metadata text), so every config file has one source: the template folder
``plc_monai/bundle_template/``. ``common/`` holds the files of every bundle, ``<name>/`` (optional)
files of one bundle only (the ACDC demo's ``configs/demo.json``). The values come from
:class:`plc_monai.data.specs.DatasetSpec` and :class:`plc_monai.data.specs.BundleSpec`.

The generated files are committed, so each bundle stays self-contained for ``python -m monai.bundle``,
MONAI Label and MONAI Deploy. After editing the template or a spec, regenerate from the repository root::

    python -m plc_monai.bundle_gen            # rewrite the files that changed
    python -m plc_monai.bundle_gen --check    # exit 1 and list the files that differ (CI, tests)

``docs/README.md`` and ``docs/data_license.txt`` of each bundle are hand-written (they describe each
dataset in prose) and are not generated.

Placeholders in template files (names are keys of :func:`template_values`):

- ``"{{name}}"``, a whole JSON string: replaced by the value as JSON (a list, number, ``null`` ...);
- ``"{{*name}}"``, a whole JSON string inside a list: replaced by the list's items (spliced);
- ``{{name}}`` inside a longer string (or in a non-JSON file): replaced by the value as text.

``configs/metadata.json`` is re-indented after rendering (``json.dumps(indent=4)``, the model zoo's
format), the other files keep the template's layout.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plc_monai.atomic_files import atomic_write_text
from plc_monai.data.specs import BUNDLES, BundleSpec, get_bundle_spec

__all__ = [
    "TEMPLATE_DIR",
    "DEFAULT_BUNDLES_DIR",
    "GENERATED_FOLDERS",
    "BundleDifference",
    "template_values",
    "render",
    "render_bundle",
    "compare_bundle",
    "write_bundle",
    "main",
]

TEMPLATE_DIR = Path(__file__).resolve().parent / "bundle_template"
"""The template: ``common/`` for every bundle, ``<name>/`` for bundle ``<name>`` only."""

DEFAULT_BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"
"""``bundles/`` of the source checkout this module belongs to."""

GENERATED_FOLDERS = ("configs",)
"""Folders of a bundle that hold generated files only: any other file there is reported as stale."""

#: files re-indented with ``json.dumps(indent=4)`` after rendering
_REFORMATTED = frozenset({"configs/metadata.json"})
_NAME = r"[a-z_][a-z0-9_]*"
_WHOLE = re.compile(r'"\{\{(\*?)(' + _NAME + r')\}\}"')
_INLINE = re.compile(r"\{\{(" + _NAME + r")\}\}")
_LEFTOVER = re.compile(r"\{\{|\}\}")


def _class_list(spec: BundleSpec) -> str:
    """``"0: background, 1: ..."``; a raw label value that differs from the class index is added in brackets."""
    items = []
    for index, (description, raw) in enumerate(zip(spec.class_descriptions, spec.dataset.raw_label_values)):
        suffix = f" (raw {raw})" if raw != index else ""
        items.append(f"{index}: {description}{suffix}")
    return ", ".join(items)


def template_values(spec: BundleSpec) -> dict[str, Any]:
    """The placeholder values of one bundle.

    Args:
        spec: the bundle's spec (its ``dataset`` gives the dataset constants).

    Returns:
        ``{placeholder name: value}``: ``name``, ``class_names``, ``num_classes``, ``label_raw_values``,
        ``spacing_mm``, ``crop_size`` (one side of the square crop), ``modality``, ``dataset_dir``,
        ``inference_dir``, ``inference_exclude``, ``inference_channels``, ``title``, ``task``,
        ``summary``, ``data_source``, ``image_description``, ``class_list`` (``"0: background, ..."``),
        ``channel_def`` (``{"0": "background", ...}``), ``references`` and ``plc_monai_version``.
    """
    import plc_monai

    data = spec.dataset
    return {
        "name": spec.name,
        "class_names": list(data.class_names),
        "num_classes": data.num_classes,
        "label_raw_values": list(data.raw_label_values),
        "spacing_mm": data.spacing_mm,
        "crop_size": data.crop_size[0],
        "modality": data.modality,
        "dataset_dir": spec.dataset_dir,
        "inference_dir": spec.inference_dir,
        "inference_exclude": list(spec.inference_exclude),
        "inference_channels": spec.inference_channels,
        "title": spec.title,
        "task": spec.task,
        "summary": spec.summary,
        "data_source": spec.data_source,
        "image_description": spec.image_description,
        "class_list": _class_list(spec),
        "channel_def": {str(i): name for i, name in enumerate(spec.channel_names)},
        "references": list(spec.references),
        "plc_monai_version": plc_monai.__version__,
    }


def _lookup(values: Mapping[str, Any], name: str, source: str) -> Any:
    if name not in values:
        raise ValueError(f"{source}: unknown placeholder {{{{{name}}}}}; known placeholders: {sorted(values)}")
    return values[name]


def render(text: str, values: Mapping[str, Any], source: str = "<template>", is_json: bool = True) -> str:
    """Fill the placeholders of one template file.

    Args:
        text: the template file's content.
        values: placeholder values (see :func:`template_values`).
        source: the file's name, for error messages.
        is_json: the file is JSON: whole-string placeholders become JSON values, inline ones are
            escaped as JSON string content, and the result must parse. ``False`` (``LICENSE``,
            ``logging.conf``): only inline placeholders, replaced by plain text.

    Returns:
        the rendered text.

    Raises:
        ValueError: for an unknown placeholder, a splice (``"{{*name}}"``) of something that is not a
            non-empty list, braces left over after rendering, or a result that is not valid JSON.
    """

    def whole(match: re.Match) -> str:
        splice, name = match.group(1), match.group(2)
        value = _lookup(values, name, source)
        if not splice:
            return json.dumps(value)
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError(f"{source}: {{{{*{name}}}}} splices a list into a list, but {name} = {value!r}")
        return ", ".join(json.dumps(v) for v in value)

    def inline(match: re.Match) -> str:
        value = _lookup(values, match.group(1), source)
        as_text = value if isinstance(value, str) else json.dumps(value)
        return json.dumps(as_text)[1:-1] if is_json else as_text

    out = _INLINE.sub(inline, _WHOLE.sub(whole, text) if is_json else text)
    leftover = _LEFTOVER.search(out)
    if leftover is not None:
        line = out.count("\n", 0, leftover.start()) + 1
        raise ValueError(f"{source}: unmatched '{leftover.group()}' left after rendering (line {line})")
    if is_json:
        try:
            json.loads(out)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}: rendered text is not valid JSON ({err})") from err
    return out


def _template_files(name: str, template_dir: Path) -> dict[str, Path]:
    """``{relative path: template file}`` of bundle ``name``: ``common/`` then ``<name>/`` (which may override)."""
    files: dict[str, Path] = {}
    for folder in (template_dir / "common", template_dir / name):
        if folder.is_dir():
            for path in sorted(folder.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    files[path.relative_to(folder).as_posix()] = path
    if not files:
        raise FileNotFoundError(f"no template files for bundle {name!r} in {template_dir} (expected common/ there)")
    return files


def render_bundle(name: str, template_dir: str | Path = TEMPLATE_DIR) -> dict[str, str]:
    """Every generated file of bundle ``name``.

    Args:
        name: ``acdc``, ``prostate`` or ``mmwhs``.
        template_dir: the template folder.

    Returns:
        ``{path relative to the bundle folder: content}``.

    Raises:
        ValueError: for an unknown bundle or a template error (see :func:`render`).
        FileNotFoundError: when the template folder has no ``common/``.
    """
    spec = get_bundle_spec(name)
    values = template_values(spec)
    out = {}
    for relative, path in _template_files(spec.name, Path(template_dir)).items():
        is_json = path.suffix == ".json"
        text = render(path.read_text(encoding="utf-8"), values, source=str(path), is_json=is_json)
        if relative in _REFORMATTED:
            text = json.dumps(json.loads(text), indent=4) + "\n"
        out[relative] = text
    return out


@dataclass(frozen=True)
class BundleDifference:
    """One file whose committed content is not what the template gives.

    Attributes:
        path: the file in the bundle folder.
        kind: ``"changed"`` (content differs), ``"missing"`` (not written yet) or ``"stale"`` (a file
            in a generated folder, e.g. ``configs/``, that the template does not produce).
    """

    path: Path
    kind: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}"


def compare_bundle(
    name: str, bundles_dir: str | Path = DEFAULT_BUNDLES_DIR, template_dir: str | Path = TEMPLATE_DIR
) -> list[BundleDifference]:
    """Compare ``<bundles_dir>/<name>`` with what the template gives; nothing is written.

    Returns:
        the differences (empty when the committed bundle is the generated one).
    """
    root = Path(bundles_dir) / name
    files = render_bundle(name, template_dir)
    found = []
    for relative, text in files.items():
        path = root / relative
        if not path.is_file():
            found.append(BundleDifference(path, "missing"))
        elif path.read_text(encoding="utf-8") != text:
            found.append(BundleDifference(path, "changed"))
    for folder in GENERATED_FOLDERS:
        if (root / folder).is_dir():
            for path in sorted((root / folder).rglob("*")):
                relative = path.relative_to(root).as_posix()
                if path.is_file() and "__pycache__" not in path.parts and relative not in files:
                    found.append(BundleDifference(path, "stale"))
    return found


def write_bundle(
    name: str, bundles_dir: str | Path = DEFAULT_BUNDLES_DIR, template_dir: str | Path = TEMPLATE_DIR
) -> list[BundleDifference]:
    """Write the generated files of bundle ``name`` that differ (each atomically); delete nothing.

    Returns:
        what differed before writing; entries of kind ``"stale"`` are still there (delete them by hand).
    """
    root = Path(bundles_dir) / name
    differences = compare_bundle(name, bundles_dir, template_dir)
    files = render_bundle(name, template_dir)
    for diff in differences:
        if diff.kind != "stale":
            atomic_write_text(diff.path, files[diff.path.relative_to(root).as_posix()])
    return differences


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m plc_monai.bundle_gen [--check] [--bundles-dir DIR] [name ...]``.

    Returns:
        the exit status: 0, or 1 when ``--check`` found differences or a stale file remains.
    """
    parser = argparse.ArgumentParser(
        prog="python -m plc_monai.bundle_gen",
        description="Write bundles/<name>/ from plc_monai/bundle_template/ and plc_monai/data/specs.py.",
    )
    parser.add_argument("names", nargs="*", help=f"bundles to write (default: all of {sorted(BUNDLES)})")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file differs")
    parser.add_argument("--bundles-dir", default=str(DEFAULT_BUNDLES_DIR), help="folder holding the bundles")
    args = parser.parse_args(argv)
    status = 0
    action = compare_bundle if args.check else write_bundle
    for name in args.names or sorted(BUNDLES):
        for diff in action(name, args.bundles_dir):
            if diff.kind == "stale":
                status = 1
                outcome = "not generated by the template; delete it or add it to the template"
            else:
                status = max(status, int(args.check))
                outcome = "differs" if args.check else "written"
            print(f"{diff} ({outcome})")
    if args.check and status == 0:
        print("bundles are up to date with the template")
    return status


if __name__ == "__main__":
    sys.exit(main())
