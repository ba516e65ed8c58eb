"""Write the MONAI bundles (``bundles/<name>/``) from ``plc_monai/bundle_template/`` and :mod:`plc_monai.data.specs`.

``python -m plc_monai.bundle_gen [--check]``; the template layout and placeholder syntax are described in
docs/training.md ("Changing the bundles").
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

__all__ = ["TEMPLATE_DIR", "DEFAULT_BUNDLES_DIR", "GENERATED_FOLDERS", "BundleDifference", "template_values", "render",
           "render_bundle", "compare_bundle", "write_bundle", "main"]

TEMPLATE_DIR = Path(__file__).resolve().parent / "bundle_template"
DEFAULT_BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"
GENERATED_FOLDERS = ("configs",)
"""Folders of a bundle that hold generated files only: any other file there is reported as stale."""

#: files re-indented with ``json.dumps(indent=4)`` (the model zoo's format) after rendering
_REFORMATTED = frozenset({"configs/metadata.json"})
_NAME = r"[a-z_][a-z0-9_]*"
_WHOLE = re.compile(r'"\{\{(\*?)(' + _NAME + r')\}\}"')
_INLINE = re.compile(r"\{\{(" + _NAME + r")\}\}")
_LEFTOVER = re.compile(r"\{\{|\}\}")
_SPEC_FIELDS = (
    "name", "dataset_dir", "inference_dir", "inference_exclude", "inference_channels", "title", "task", "summary",
    "data_source", "image_description", "references",
)
_DATASET_FIELDS = ("class_names", "num_classes", "spacing_mm", "modality")


def template_values(spec: BundleSpec) -> dict[str, Any]:
    """The placeholder values of one bundle: ``{placeholder name: value}``.

    The spec's fields in ``_SPEC_FIELDS``, its dataset's in ``_DATASET_FIELDS`` and ``label_raw_values``; ``crop_size``
    (one side of the square crop); ``class_list`` (``"0: background, 1: ..."``, a raw label value that differs from
    the class index in brackets); ``channel_def`` (``{"0": "background", ...}``); ``plc_monai_version``.
    """
    import plc_monai

    data = spec.dataset
    class_list = ", ".join(
        f"{index}: {description}" + (f" (raw {raw})" if raw != index else "")
        for index, (description, raw) in enumerate(zip(spec.class_descriptions, data.raw_label_values))
    )
    return {
        **{name: getattr(spec, name) for name in _SPEC_FIELDS},
        **{name: getattr(data, name) for name in _DATASET_FIELDS},
        "label_raw_values": data.raw_label_values,
        "crop_size": data.crop_size[0],
        "class_list": class_list,
        "channel_def": {str(i): name for i, name in enumerate(spec.channel_names)},
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
        is_json: JSON file (whole-string and spliced placeholders, escaped inline text, the result
            must parse); ``False``: only inline placeholders, replaced by plain text.

    Raises:
        ValueError: for an unknown placeholder, a splice of something that is not a non-empty list,
            braces left over after rendering, or a result that is not valid JSON.
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


def _files_under(folder: Path) -> list[Path]:
    """The files below ``folder``, sorted, without ``__pycache__``."""
    return [p for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]


def render_bundle(name: str, template_dir: str | Path = TEMPLATE_DIR) -> dict[str, str]:
    """Every generated file of bundle ``name``: ``{path relative to the bundle folder: content}``.

    Raises:
        ValueError: for an unknown bundle or a template error (see :func:`render`).
        FileNotFoundError: when the template folder has no ``common/``.
    """
    spec = get_bundle_spec(name)
    values = template_values(spec)
    template_dir = Path(template_dir)
    templates = {p.relative_to(folder).as_posix(): p for folder in (template_dir / "common", template_dir / spec.name)
                 for p in _files_under(folder)}
    if not templates:
        raise FileNotFoundError(f"no template files for bundle {name!r} in {template_dir} (expected common/ there)")
    out = {}
    for relative, path in templates.items():
        text = render(path.read_text(encoding="utf-8"), values, source=str(path), is_json=path.suffix == ".json")
        if relative in _REFORMATTED:
            text = json.dumps(json.loads(text), indent=4) + "\n"
        out[relative] = text
    return out


@dataclass(frozen=True)
class BundleDifference:
    """A bundle file that is not what the template gives.

    ``kind``: ``"changed"``, ``"missing"`` or ``"stale"`` (in ``configs/`` but not produced by the template).
    """

    path: Path
    kind: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}"


def compare_bundle(
    name: str, bundles_dir: str | Path = DEFAULT_BUNDLES_DIR, template_dir: str | Path = TEMPLATE_DIR
) -> list[BundleDifference]:
    """The differences between ``<bundles_dir>/<name>`` and what the template gives; nothing is written."""
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
        stale = [p for p in _files_under(root / folder) if p.relative_to(root).as_posix() not in files]
        found += [BundleDifference(path, "stale") for path in stale]
    return found


def write_bundle(
    name: str, bundles_dir: str | Path = DEFAULT_BUNDLES_DIR, template_dir: str | Path = TEMPLATE_DIR
) -> list[BundleDifference]:
    """Write the generated files of bundle ``name`` that differ (atomically); return what differed before.

    Stale files are reported, never deleted.
    """
    root = Path(bundles_dir) / name
    differences = compare_bundle(name, bundles_dir, template_dir)
    files = render_bundle(name, template_dir)
    for diff in differences:
        if diff.kind != "stale":
            atomic_write_text(diff.path, files[diff.path.relative_to(root).as_posix()])
    return differences


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m plc_monai.bundle_gen [--check] [--bundles-dir DIR] [name ...]``; 1 if a file differs or is stale."""
    parser = argparse.ArgumentParser(
        prog="python -m plc_monai.bundle_gen",
        description="Write bundles/<name>/ from plc_monai/bundle_template/ and plc_monai/data/specs.py.",
    )
    parser.add_argument("names", nargs="*", help=f"bundles to write (default: all of {sorted(BUNDLES)})")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file differs")
    parser.add_argument("--bundles-dir", default=str(DEFAULT_BUNDLES_DIR), help="folder holding the bundles")
    args = parser.parse_args(argv)
    action = compare_bundle if args.check else write_bundle
    differences = [diff for name in args.names or sorted(BUNDLES) for diff in action(name, args.bundles_dir)]
    for diff in differences:
        if diff.kind == "stale":
            print(f"{diff} (not generated by the template; delete it or add it to the template)")
        else:
            print(f"{diff} ({'differs' if args.check else 'written'})")
    if args.check and not differences:
        print("bundles are up to date with the template")
    return int(any(args.check or diff.kind == "stale" for diff in differences))


if __name__ == "__main__":
    sys.exit(main())
