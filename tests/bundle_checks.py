"""Offline checks of a MONAI bundle folder used by the tests: metadata against its JSON schema, config properties."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.bundle.utils import ID_SEP_KEY
from monai.utils import BundleProperty, BundlePropertyConfig, optional_import

__all__ = ["metadata_file", "verify_bundle_metadata", "check_config_properties"]

_, _HAS_JSONSCHEMA = optional_import("jsonschema")


def metadata_file(bundle_dir: str | os.PathLike) -> Path:
    """The path of ``<bundle_dir>/configs/metadata.json``.

    Raises:
        FileNotFoundError: when there is no such file.
    """
    meta = Path(bundle_dir) / "configs" / "metadata.json"
    if not meta.is_file():
        raise FileNotFoundError(f"bundle folder {bundle_dir} does not exist or has no configs/metadata.json ({meta}).")
    return meta


def verify_bundle_metadata(bundle_dir: str | os.PathLike, schema_file: str | os.PathLike) -> None:
    """Validate ``<bundle_dir>/configs/metadata.json`` against a local JSON schema file, offline.

    ``python -m monai.bundle verify_metadata --filepath <schema_file>`` (no download, no hash check: MONAI's pinned
    copy differs byte-wise from the published one), plus model-zoo CI's rule that ``version`` is in ``changelog``.

    Args:
        bundle_dir: root folder of the bundle (the one holding ``configs/``).
        schema_file: local copy of the schema that ``metadata["schema"]`` names.

    Raises:
        FileNotFoundError: when the bundle folder, its metadata file or ``schema_file`` is missing.
        ImportError: when ``jsonschema`` is not installed (MONAI would fail with an unrelated ``TypeError``).
        ValueError: when the metadata is not valid JSON, fails the schema, or lacks its version in ``changelog``.
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
    version, changelog = content.get("version"), content.get("changelog")
    if not isinstance(changelog, dict) or version not in changelog:
        raise ValueError(
            f"{meta}: version {version!r} must be a key of 'changelog' (model-zoo CI rule), "
            f"found changelog keys {sorted(changelog) if isinstance(changelog, dict) else changelog!r}."
        )


def _check_reference_slots(workflow: Any) -> None:
    """Raise a clear ``ValueError`` for config shapes that make MONAI 1.6.1's ``check_properties`` crash.

    MONAI calls ``ref.startswith("$")`` on the slot of each referenced optional property (an inline
    dict or number there raises ``AttributeError``) and reads ``h["_target_"]`` of every
    ``train#handlers`` entry (a string there raises ``TypeError``).
    """
    parser, properties = workflow.parser, workflow.properties
    handlers_id = "train#handlers"
    slots = []  # (config id, its value, property name) of every slot MONAI reads as a reference
    if workflow.workflow_type == "train" and handlers_id in parser:
        handlers = parser[handlers_id]
        if not isinstance(handlers, list) or any(not isinstance(h, dict) or "_target_" not in h for h in handlers):
            raise ValueError(
                f"config id '{handlers_id}' must be a list of dicts with '_target_' (MONAI's check_properties "
                f"reads h['_target_'] of every entry), got {handlers!r}."
            )
        for index, handler in enumerate(handlers):
            if handler["_target_"] == "ValidationHandler":
                for arg, name in (("validator", "evaluator"), ("interval", "val_interval")):
                    slots.append((f"{handlers_id}#{index}#{arg}", handler.get(arg), name))
    for name, prop in properties.items():
        ref_id = prop.get(BundlePropertyConfig.REF_ID)
        if ref_id is None or prop.get(BundleProperty.REQUIRED, False) or name in ("evaluator", "val_interval"):
            continue  # MONAI reads the slots of these two from ValidationHandler (above)
        slots.append((ref_id.replace(ID_SEP_KEY, "#"), parser.get(ref_id, None), name))
    for config_id, value, name in slots:
        if value is not None and not isinstance(value, str):
            expected = properties[name][BundlePropertyConfig.ID].replace(ID_SEP_KEY, "#")  # MONAI 1.6 stores '::'
            raise ValueError(
                f"config id '{config_id}' holds an inline {type(value).__name__}; MONAI's check_properties expects "
                f"the reference '@{expected}' (property '{name}') or a '$' expression there."
            )


def check_config_properties(
    bundle_dir: str | os.PathLike,
    config_files: str | os.PathLike | Sequence[str | os.PathLike],
    workflow_type: str = "train",
    **override: Any,
) -> list[str]:
    """The properties MONAI's ``check_properties`` reports for a bundle config, checked as model-zoo tests do.

    Checking instantiates the properties (trainer, datasets, loaders), so override ``dataset_dir``,
    ``bundle_root``, ``output_dir`` to real or phantom data and a scratch folder. The bundle's
    ``logging.conf`` is not applied, so callers keep their logging setup.

    Args:
        bundle_dir: root folder of the bundle (the one holding ``configs/``).
        config_files: one config file or a sequence merged in order, relative to ``<bundle_dir>/configs``
            unless absolute, e.g. ``["train.json", "evaluate.json"]``.
        workflow_type: ``"train"`` (also for train + evaluate, as model-zoo does), ``"infer"`` or a MONAI alias.
        override: config ids and values, e.g. ``dataset_dir="/data/acdc"``; ``#`` separated ids need
            the ``**{"train#trainer#max_epochs": 1}`` form.

    Returns:
        the required properties that are missing, then the optional ones referenced under a wrong id;
        ``[]`` when the bundle passes.

    Raises:
        FileNotFoundError: when the bundle folder, its metadata file or a config file is missing.
        ValueError: when ``config_files`` is empty, ``workflow_type`` is not supported, or the config has
            a shape that makes MONAI's check crash (an inline value where a reference belongs, e.g.
            ``train#trainer#postprocessing``, or a ``train#handlers`` entry without ``_target_``).
    """
    from monai.bundle import ConfigWorkflow

    root = Path(bundle_dir)
    meta = metadata_file(root)
    names = [config_files] if isinstance(config_files, (str, os.PathLike)) else list(config_files)
    if not names:
        raise ValueError("config_files must name at least one config file, e.g. 'train.json'.")
    configs = [root / "configs" / name for name in names]  # an absolute name replaces the folder
    for path in configs:
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist (bundle {root}).")
    workflow = ConfigWorkflow(
        [str(c) for c in configs], str(meta), logging_file=False, workflow_type=workflow_type, **override
    )
    workflow.initialize()
    _check_reference_slots(workflow)
    # MONAI 1.6.1's check_properties raises KeyError when a required property's id is absent (its
    # `hasattr` probe swallows AttributeError only): report those here, let MONAI check the rest.
    props = workflow.properties
    required = {name: p.get(BundlePropertyConfig.ID) for name, p in props.items() if p.get(BundleProperty.REQUIRED)}
    absent = [name for name, id_ in required.items() if id_ is not None and id_ not in workflow.parser]
    workflow.properties = {name: p for name, p in props.items() if name not in absent}
    return absent + list(workflow.check_properties() or [])
