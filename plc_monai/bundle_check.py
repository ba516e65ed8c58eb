"""Offline checks of a MONAI bundle folder: metadata against its JSON schema, config properties.

Both checks run without network access, so tests and CI can call them:

- :func:`verify_bundle_metadata` runs MONAI's own ``verify_metadata`` (what
  ``python -m monai.bundle verify_metadata`` does) with ``filepath`` pointing at a local copy of the
  schema. MONAI's downloader returns early when that file already exists, so nothing is fetched.
  It also applies the model-zoo CI rule that ``version`` must be a key of ``changelog``.
- :func:`check_config_properties` builds a :class:`monai.bundle.ConfigWorkflow`, initialises it and
  returns what :meth:`~monai.bundle.ConfigWorkflow.check_properties` reports: required properties
  that are missing, plus optional properties that are referenced under a non-standard config id.

Equivalent command line for the metadata check (offline as long as the ``--filepath`` file exists)::

    python -m monai.bundle verify_metadata --meta_file bundles/acdc/configs/metadata.json \\
        --filepath /path/to/meta_schema_20240725.json
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.utils import BundleProperty, BundlePropertyConfig, optional_import

__all__ = ["metadata_file", "verify_bundle_metadata", "check_config_properties"]

_, _HAS_JSONSCHEMA = optional_import("jsonschema")


def metadata_file(bundle_dir: str | os.PathLike) -> Path:
    """Return the path of ``<bundle_dir>/configs/metadata.json``.

    Args:
        bundle_dir: root folder of the bundle (the one holding ``configs/``).

    Returns:
        Path of the metadata file.

    Raises:
        FileNotFoundError: when ``bundle_dir`` is not a folder or has no ``configs/metadata.json``.
    """
    root = Path(bundle_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"bundle folder {root} does not exist or is not a folder.")
    meta = root / "configs" / "metadata.json"
    if not meta.is_file():
        raise FileNotFoundError(f"bundle folder {root} has no configs/metadata.json (expected {meta}).")
    return meta


def verify_bundle_metadata(bundle_dir: str | os.PathLike, schema_file: str | os.PathLike) -> None:
    """Validate ``<bundle_dir>/configs/metadata.json`` against a local JSON schema file, offline.

    Calls :func:`monai.bundle.verify_metadata` with ``filepath=schema_file``; because the file exists
    MONAI skips the download of the schema URL named in the metadata. No hash is checked (the
    project-monai.github.io copy of a schema differs byte-wise from the release asset MONAI pins).
    Then checks that ``version`` is a key of ``changelog``, as model-zoo's CI requires.

    Args:
        bundle_dir: root folder of the bundle (the one holding ``configs/``).
        schema_file: local copy of the schema that ``metadata["schema"]`` names, e.g.
            ``meta_schema_20240725.json``.

    Raises:
        FileNotFoundError: when the bundle folder, its metadata file or ``schema_file`` is missing.
        ImportError: when ``jsonschema`` is not installed (MONAI then fails with an unrelated
            ``TypeError``, so this is checked first).
        ValueError: when the metadata is not valid JSON, fails the schema, or its ``version`` is
            missing from ``changelog``.
    """
    meta = metadata_file(bundle_dir)
    schema = Path(schema_file)
    if not schema.is_file():
        raise FileNotFoundError(
            f"schema file {schema} does not exist; give a local copy of the schema named in {meta} "
            "(an absent file would make MONAI try to download it)."
        )
    if not _HAS_JSONSCHEMA:
        raise ImportError("verify_bundle_metadata needs the 'jsonschema' package: pip install jsonschema.")
    try:
        content = json.loads(meta.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta} is not valid JSON: {e}") from e
    if not isinstance(content, dict):
        raise ValueError(f"{meta} must hold a JSON object, got {type(content).__name__}.")

    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(meta), filepath=str(schema), create_dir=False)

    version = content.get("version")
    changelog = content.get("changelog")
    if not isinstance(changelog, dict) or version not in changelog:
        raise ValueError(
            f"{meta}: version {version!r} must be a key of 'changelog' (model-zoo CI rule), "
            f"found changelog keys {sorted(changelog) if isinstance(changelog, dict) else changelog!r}."
        )


def _config_paths(bundle_dir: Path, config_files: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Resolve config file names against ``<bundle_dir>/configs`` (absolute paths are kept as given)."""
    names = [config_files] if isinstance(config_files, (str, os.PathLike)) else list(config_files)
    if not names:
        raise ValueError("config_files must name at least one config file, e.g. 'train.json'.")
    paths = []
    for name in names:
        path = Path(name)
        if not path.is_absolute():
            path = bundle_dir / "configs" / path
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist (bundle {bundle_dir}).")
        paths.append(str(path))
    return paths


def _hash_ids(config_id: str) -> str:
    """Write a MONAI config id with ``#`` separators (MONAI 1.6 stores them as ``::``)."""
    return config_id.replace("::", "#")


def _check_reference_slots(workflow: Any) -> None:
    """Raise a clear error for config shapes that make MONAI 1.6.1's ``check_properties`` crash.

    ``ConfigWorkflow._check_optional_id`` calls ``ref.startswith("$")`` on whatever sits in a slot
    that refers to an optional property (e.g. ``train#trainer#postprocessing``), so an inline dict,
    list or number there raises ``AttributeError``; and it indexes every entry of ``train#handlers``
    with ``["_target_"]``, so a string entry (or a string instead of the list) raises ``TypeError``.

    Args:
        workflow: an initialised :class:`monai.bundle.ConfigWorkflow`.

    Raises:
        ValueError: naming the config id, what it holds and what MONAI expects there.
    """
    parser = workflow.parser
    handlers_id = "train#handlers"
    if workflow.workflow_type == "train" and handlers_id in parser:
        handlers = parser[handlers_id]
        if not isinstance(handlers, list) or any(not isinstance(h, dict) or "_target_" not in h for h in handlers):
            raise ValueError(
                f"config id '{handlers_id}' must be a list of dicts with '_target_' (MONAI's check_properties "
                f"reads h['_target_'] of every entry), got {handlers!r}."
            )
        for index, handler in enumerate(handlers):
            if handler["_target_"] != "ValidationHandler":
                continue
            for arg, prop_name in (("validator", "evaluator"), ("interval", "val_interval")):
                value = handler.get(arg)
                if value is not None and not isinstance(value, str):
                    expected = _hash_ids(workflow.properties[prop_name][BundlePropertyConfig.ID])
                    raise ValueError(
                        f"config id '{handlers_id}#{index}#{arg}' of ValidationHandler holds {value!r}; "
                        f"MONAI's check_properties expects the reference '@{expected}' (or a '$' expression)."
                    )
    for name, prop in workflow.properties.items():
        ref_id = prop.get(BundlePropertyConfig.REF_ID)
        if prop.get(BundleProperty.REQUIRED, False) or ref_id is None or name in ("evaluator", "val_interval"):
            continue
        value = parser.get(ref_id, None)
        if value is not None and not isinstance(value, str):
            raise ValueError(
                f"config id '{_hash_ids(ref_id)}' holds an inline {type(value).__name__}; MONAI's check_properties "
                f"expects the reference '@{_hash_ids(prop[BundlePropertyConfig.ID])}' (property '{name}') or a '$' "
                "expression there."
            )


def check_config_properties(
    bundle_dir: str | os.PathLike,
    config_files: str | os.PathLike | Sequence[str | os.PathLike],
    workflow_type: str = "train",
    use_logging_conf: bool = False,
    **override: Any,
) -> list[str]:
    """Return the properties MONAI's ``check_properties`` reports for a bundle config.

    The workflow is built as the model-zoo tests build it: ``ConfigWorkflow(config_file=...,
    meta_file=<bundle>/configs/metadata.json, workflow_type=...)``, then ``initialize()`` (which runs
    the config's ``initialize`` expressions), then ``check_properties()``. Checking a property
    instantiates it (trainer, datasets, data loaders), so pass overrides such as ``dataset_dir``,
    ``bundle_root`` or ``output_dir`` that point at real or phantom data and at a scratch folder.

    Args:
        bundle_dir: root folder of the bundle (the one holding ``configs/``).
        config_files: one config file name or a sequence merged in order, relative to
            ``<bundle_dir>/configs`` unless absolute, e.g. ``"inference.json"`` or
            ``["train.json", "evaluate.json"]``.
        workflow_type: ``"train"`` (also for train + evaluate overrides, as model-zoo does) or
            ``"infer"``; MONAI also accepts ``"training"``, ``"inference"``, ``"eval"``,
            ``"evaluation"``.
        use_logging_conf: apply ``<bundle_dir>/configs/logging.conf`` to the process's logging
            setup (MONAI's default for ``run``). Off by default so that callers such as tests keep
            their own logging configuration.
        override: config ids and values to override, e.g. ``dataset_dir="/data/acdc"``.
            ``#`` separated ids need the ``**{"train#trainer#max_epochs": 1}`` form.

    Returns:
        Names of the required properties whose config id is absent, then the required properties
        MONAI reports as missing and the optional properties it finds referenced under a wrong id;
        ``[]`` when the bundle passes.

    Raises:
        FileNotFoundError: when the bundle folder, its metadata file or a config file is missing.
        ValueError: when ``config_files`` is empty, ``workflow_type`` is not supported, or the config
            has a shape that makes MONAI's check crash: an inline value (dict, list, number) where a
            referenced optional property belongs (e.g. ``train#trainer#postprocessing``,
            ``ValidationHandler``'s ``interval``), or a ``train#handlers`` entry without ``_target_``.
    """
    from monai.bundle import ConfigWorkflow

    root = Path(bundle_dir)
    meta = metadata_file(root)
    configs = _config_paths(root, config_files)
    logging_file: str | bool = False
    if use_logging_conf:
        logging_path = root / "configs" / "logging.conf"
        if not logging_path.is_file():
            raise FileNotFoundError(f"bundle folder {root} has no configs/logging.conf (expected {logging_path}).")
        logging_file = str(logging_path)
    workflow = ConfigWorkflow(
        config_file=configs,
        meta_file=str(meta),
        logging_file=logging_file,
        workflow_type=workflow_type,
        **override,
    )
    workflow.initialize()
    _check_reference_slots(workflow)
    # MONAI 1.6.1 raises KeyError from `check_properties` when a required property's config id is
    # absent (its `hasattr` probe only swallows AttributeError), so report those ids here and let
    # MONAI check the rest: instantiation of the present ones and the ids of optional references.
    properties = workflow.properties
    absent = [
        name
        for name, prop in properties.items()
        if prop.get(BundleProperty.REQUIRED, False)
        and prop.get(BundlePropertyConfig.ID) is not None
        and prop[BundlePropertyConfig.ID] not in workflow.parser
    ]
    workflow.properties = {name: prop for name, prop in properties.items() if name not in absent}
    try:
        reported = workflow.check_properties() or []
    finally:
        workflow.properties = properties
    return absent + list(reported)
