"""The bundles are generated from one template (``bundles/generate.py``): the committed files are the
generated ones, and the generator's placeholders, checks and writes behave as documented."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GENERATOR = REPO / "bundles" / "generate.py"
_spec = importlib.util.spec_from_file_location("bundles_generate", GENERATOR)
generate = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)  # dataclasses look the module up
_spec.loader.exec_module(generate)
DEFAULT_BUNDLES_DIR, TEMPLATE_DIR, BUNDLES = generate.DEFAULT_BUNDLES_DIR, generate.TEMPLATE_DIR, generate.BUNDLES
compare_bundle, render, render_bundle, write_bundle = (generate.compare_bundle, generate.render, generate.render_bundle,
                                                       generate.write_bundle)
get_bundle_spec, template_values = generate.get_bundle_spec, generate.template_values
NAMES = ("acdc", "prostate", "mmwhs")


def test_bundles_dir_is_this_checkout():
    assert DEFAULT_BUNDLES_DIR == REPO / "bundles"
    assert sorted(BUNDLES) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_committed_bundle_is_the_generated_one(name):
    """Every generated file equals the committed one byte for byte, and configs/ holds nothing else.

    On failure: run ``python bundles/generate.py`` and commit the result (or move a hand edit of
    ``bundles/<name>/configs`` into ``bundles/_template``).
    """
    files = render_bundle(name)
    assert "configs/train.json" in files and "configs/metadata.json" in files and "LICENSE" in files
    differences = compare_bundle(name)
    assert differences == [], "regenerate with `python bundles/generate.py`:\n" + "\n".join(map(str, differences))


@pytest.mark.parametrize("name", NAMES)
def test_generated_values_come_from_the_specs(name):
    """The parsed bundle values are the spec's (a number typed into the template would differ for two bundles)."""
    from monai.bundle import ConfigParser

    spec = get_bundle_spec(name)
    data = spec.dataset
    for config in ("train.json", "inference.json"):
        parser = ConfigParser()
        parser.read_config(str(REPO / "bundles" / name / "configs" / config))
        assert parser.get_parsed_content("class_names") == list(data.class_names)
        assert parser.get_parsed_content("num_classes") == data.num_classes
        assert parser.get_parsed_content("spacing_mm") == data.spacing_mm
        assert [parser.get_parsed_content("crop_size")] * 2 == list(data.crop_size)
        assert parser.get_parsed_content("bundle_root") == f"bundles/{name}"
    train = ConfigParser()
    train.read_config(str(REPO / "bundles" / name / "configs" / "train.json"))
    assert train.get_parsed_content("dataset_name") == name
    assert train.get_parsed_content("label_raw_values") == list(data.raw_label_values)
    assert train.get_parsed_content("dataset_dir") == spec.dataset_dir
    meta = json.loads((REPO / "bundles" / name / "configs" / "metadata.json").read_text(encoding="utf-8"))
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == data.num_classes
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == list(data.crop_size)
    assert meta["references"][1 : 1 + len(spec.references)] == list(spec.references)
    assert str(data.spacing_mm) in meta["description"] and str(data.spacing_mm) in meta["image_classes"]


def test_class_list_names_raw_values_that_differ_from_the_index():
    acdc, mmwhs = template_values(get_bundle_spec("acdc")), template_values(get_bundle_spec("mmwhs"))
    assert acdc["class_list"] == "0: background, 1: right ventricle cavity, 2: left-ventricular myocardium, 3: left ventricle cavity"
    assert mmwhs["class_list"].startswith("0: background, 1: left-ventricular myocardium (raw 205), 2: left atrium (raw 420)")
    assert acdc["channel_def"] == {"0": "background", "1": "RV", "2": "myocardium", "3": "LV"}


# ------------------------------------------------------------------------------------ placeholders


def test_render_whole_inline_and_spliced_placeholders():
    values = {"names": ["a", "b"], "size": 96, "text": 'say "hi"', "none": None, "refs": ["r1", "r2"]}
    text = '{"n": "{{names}}", "s": ["{{size}}", "{{size}}"], "t": "<{{text}}> at {{size}} mm", "x": "{{none}}", "r": ["r0", "{{*refs}}"]}'
    out = json.loads(render(text, values))
    assert out == {"n": ["a", "b"], "s": [96, 96], "t": '<say "hi"> at 96 mm', "x": None, "r": ["r0", "r1", "r2"]}
    assert render("size={{size}} text={{text}}\n", values, is_json=False) == 'size=96 text=say "hi"\n'


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"a": "{{nope}}"}', r"x.json: unknown placeholder \{\{nope\}\}"),
        ('{"a": "in {{nope}} text"}', r"unknown placeholder \{\{nope\}\}"),
        ('{"a": ["{{*size}}"]}', r"splices a list into a list, but size = 96"),
        ('{"a": "{{size}"}', r"unmatched '\{\{' left after rendering \(line 1\)"),
        ('{"a": "{{size}}",}', r"x.json: rendered text is not valid JSON"),
    ],
)
def test_render_errors_name_the_file_and_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        render(text, {"size": 96}, source="x.json")


# ------------------------------------------------------------------------------------ check and write


def _copy_bundles(tmp_path: Path) -> Path:
    out = tmp_path / "bundles"
    for name in NAMES:
        shutil.copytree(REPO / "bundles" / name / "configs", out / name / "configs")
        shutil.copyfile(REPO / "bundles" / name / "LICENSE", out / name / "LICENSE")
    return out


def test_check_finds_edits_missing_and_stale_files_and_write_repairs(tmp_path):
    bundles = _copy_bundles(tmp_path)
    assert compare_bundle("prostate", bundles) == []
    train = bundles / "prostate" / "configs" / "train.json"
    train.write_text(train.read_text(encoding="utf-8").replace('"seed": 0', '"seed": 1'), encoding="utf-8")
    (bundles / "prostate" / "configs" / "methods" / "baseline.json").unlink()
    stale = bundles / "prostate" / "configs" / "old_override.json"
    stale.write_text("{}", encoding="utf-8")
    found = {(d.path.name, d.kind) for d in compare_bundle("prostate", bundles)}
    assert found == {("train.json", "changed"), ("baseline.json", "missing"), ("old_override.json", "stale")}

    written = write_bundle("prostate", bundles)
    assert {(d.path.name, d.kind) for d in written} == found
    assert [(d.path.name, d.kind) for d in compare_bundle("prostate", bundles)] == [("old_override.json", "stale")]
    assert stale.is_file()  # stale files are reported, never deleted
    assert train.read_text(encoding="utf-8") == render_bundle("prostate")["configs/train.json"]
    leftovers = [p.name for p in (bundles / "prostate").rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []  # atomic writes leave no temporary file


def test_command_line_check_and_write(tmp_path):
    bundles = _copy_bundles(tmp_path)
    cmd = [sys.executable, str(GENERATOR), "--bundles-dir", str(bundles)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ok = subprocess.run([*cmd, "--check"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert ok.returncode == 0 and "up to date" in ok.stdout, ok.stdout + ok.stderr
    evaluate = bundles / "mmwhs" / "configs" / "evaluate.json"
    evaluate.write_text("{}", encoding="utf-8")
    bad = subprocess.run([*cmd, "--check", "mmwhs"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert bad.returncode == 1 and f"changed: {evaluate}" in bad.stdout, bad.stdout + bad.stderr
    fixed = subprocess.run([*cmd, "mmwhs"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert fixed.returncode == 0 and "written" in fixed.stdout, fixed.stdout + fixed.stderr
    assert evaluate.read_text(encoding="utf-8") == (REPO / "bundles" / "mmwhs" / "configs" / "evaluate.json").read_text(
        encoding="utf-8"
    )


def test_template_has_no_dataset_literal():
    """The common template names no dataset: its values come from the specs (one place for each fact)."""
    for path in (TEMPLATE_DIR / "common").rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8").lower()
            for word in ("acdc", "prostate", "mmwhs", "1.367", "205"):
                assert word not in text, f"{path} contains {word!r}"
