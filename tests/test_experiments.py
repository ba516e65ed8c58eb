"""Experiment harness: method overrides, trainer switches, runs through the bundle, tables, figures, resume."""

from __future__ import annotations

import contextlib
import io
import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from fire import parser as fire_parser
from monai.bundle import ConfigParser

from plc_monai.data.phantom import write_phantom_dataset
from plc_monai.engines import SemiSupervisedTrainer
from plc_monai.experiments.figures import sample_pixels_per_class
from plc_monai.experiments.harness import _as_list, aggregate, experiment, paper_dice, run_experiment
from plc_monai.experiments.launch import LaunchOptions
from plc_monai.experiments.round_models import RoundModelSaver, round_model_path
from plc_monai.experiments.runs import (
    ExperimentSpec,
    available_methods,
    bundle_command,
    bundle_parser,
    combo_split_seed,
    method_config,
    plan_runs,
)
from plc_monai.handlers import PseudoLabelRefresh

REPO = Path(__file__).resolve().parents[1]
BUNDLES = {name: REPO / "bundles" / name for name in ("acdc", "prostate", "mmwhs")}
METHODS = ("baseline", "self_training", "plc_inter", "plc_intra", "joint_pl_in_seg", "two_step_semi", "two_step_supervised")

# a schedule small enough for a few seconds of CPU per run
TINY = {
    "warmup_iterations": 4,
    "num_rounds": 2,
    "pseudo_label_interval": 2,
    "val_interval": 2,
    "log_interval": 2,
    "save_interval": 4,
    "batch_size": 4,
    "labeled_per_batch": 2,
    "crop_size": 32,
    "spacing_mm": 6.0,
    "channels": [4, 8],
    "n4": False,
    "test_fraction": 0.3,
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks run faster on one thread, and a busy CI machine does not oversubscribe OpenMP."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom_acdc")
    write_phantom_dataset("acdc", root, num_subjects=8, seed=0, image_size=(64, 64), num_slices=6)
    return root / "training"


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _tiny_run(method: str, phantom: Path, out: Path, cache: Path):
    """The harness's plan of one tiny run (method ids win over TINY, e.g. the baseline's num_rounds 0)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        (run,) = plan_runs(ExperimentSpec(BUNDLES["acdc"], "tr1", ["c1"], [method], phantom, out, split="random",
                                          overrides=TINY, device="cpu", cache_dir=cache))
    return run


# --------------------------------------------------------------------------------------------
# method files
# --------------------------------------------------------------------------------------------


def test_every_bundle_ships_the_same_method_files():
    assert available_methods(BUNDLES["acdc"]) == sorted(METHODS)
    for name, bundle in BUNDLES.items():
        for method in METHODS:
            ours = json.loads(method_config(bundle, method).read_text())
            assert ours == json.loads(method_config(BUNDLES["acdc"], method).read_text()), (name, method)
    with pytest.raises(FileNotFoundError, match="available"):
        method_config(BUNDLES["acdc"], "no_such_method")


@pytest.mark.parametrize("bundle", list(BUNDLES))
@pytest.mark.parametrize("method", METHODS)
def test_method_override_parses_after_train_json(bundle, method):
    configs = BUNDLES[bundle] / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), str(method_config(BUNDLES[bundle], method))])
    parser["warmup_iterations"], parser["pseudo_label_interval"] = 30, 7  # train.json: num_rounds 3
    parser.parse()
    total = parser.get_parsed_content("total_iterations")
    rounds = parser.get_parsed_content("num_rounds")
    if method == "baseline":
        assert (rounds, total) == (0, 30)  # warm-up only
    elif method.startswith("two_step"):
        assert parser.get_parsed_content("finetune_iterations") == 7
        assert total == 30 + 3 * 7 + 7
        assert parser["train#trainer#seg_weight"] == 0.0
    else:
        assert total == 30 + 3 * 7
    handlers = parser["train#handlers"]
    savers = [h for h in handlers if h["_target_"].endswith("RoundModelSaver")]
    assert len(savers) == (1 if method in ("self_training", "plc_inter", "plc_intra", "joint_pl_in_seg") else 0)
    # the refresh handler has its own id, referenced from the list (method files address it by that id)
    assert [h["_target_"].replace("::", "#") for h in handlers].count("@train#pseudo_label_refresh") == 1
    assert parser["train#pseudo_label_refresh#_target_"].endswith("PseudoLabelRefresh")
    assert parser["scheme"] == method


@pytest.mark.parametrize("method", METHODS)
def test_trainer_switches_of_each_method(method, phantom, shared_cache, tmp_path):
    run = _tiny_run(method, phantom, tmp_path, shared_cache)
    parser = bundle_parser(run.config_files, run.settings)
    trainer = parser.get_parsed_content("train#trainer")
    assert isinstance(trainer, SemiSupervisedTrainer)
    handlers = parser.get_parsed_content("train#handlers")
    refresh = next(h for h in handlers if isinstance(h, PseudoLabelRefresh))
    savers = [h for h in handlers if isinstance(h, RoundModelSaver)]
    warmup, rounds, interval = TINY["warmup_iterations"], TINY["num_rounds"], TINY["pseudo_label_interval"]
    assert trainer.warmup_iterations == warmup
    if method == "baseline":
        assert trainer.total_iterations == warmup and trainer.final_phase == "warmup"
        assert refresh.max_refreshes == 0 and not savers
        return
    matching = trainer.contrastive_loss.matching
    if method == "self_training":
        assert trainer.lambda_cont == 0.0 and trainer.pseudo_labels_in_seg_loss
        assert trainer.seg_weight == 1.0 and trainer.final_phase == "joint"
    elif method in ("plc_inter", "plc_intra"):
        assert trainer.lambda_cont == pytest.approx(0.1) and not trainer.pseudo_labels_in_seg_loss
        assert matching == method.split("_")[1] and trainer.unlabeled_in_contrastive
        assert trainer.final_phase == "joint"
    elif method == "joint_pl_in_seg":
        assert trainer.lambda_cont > 0 and trainer.pseudo_labels_in_seg_loss and matching == "inter"
    else:  # two-step: contrastive pre-training (no segmentation loss), then fine-tuning
        assert trainer.seg_weight == 0.0 and trainer.lambda_cont > 0
        assert trainer.finetune_iterations == interval and trainer.final_phase == "finetune"
        assert trainer.total_iterations == warmup + rounds * interval + interval
        assert trainer.phase(warmup + rounds * interval + 1) == "finetune"
        semi = method == "two_step_semi"
        assert trainer.unlabeled_in_contrastive is semi and trainer.pseudo_labels_in_seg_loss is semi
        # pseudo-labels come once from the warm-up model (semi) or never (fully supervised)
        assert refresh.max_refreshes == (1 if semi else 0)
    if method in ("self_training", "plc_inter", "plc_intra", "joint_pl_in_seg"):
        assert trainer.total_iterations == warmup + rounds * interval
        assert len(savers) == 1
        assert sorted(savers[0].iterations) == [warmup + k * interval for k in range(rounds + 1)]


def test_methods_train_through_the_bundle_entry_point(phantom, shared_cache, tmp_path):
    """baseline, self_training and two_step_semi run via ``monai.bundle.run`` (the CLI's function)."""
    from monai.bundle import run as bundle_run

    outs = {}
    for method in ("baseline", "self_training", "two_step_semi"):
        run = _tiny_run(method, phantom, tmp_path, shared_cache)
        bundle_run("training", config_file=[str(f) for f in run.config_files], **run.settings)
        outs[method] = run.ckpt_dir
        assert (run.ckpt_dir / "model.pt").is_file() and (run.run_dir / "split.json").is_file()
    state = {m: torch.load(p / "checkpoint.pt", map_location="cpu", weights_only=True) for m, p in outs.items()}
    w, r, p = TINY["warmup_iterations"], TINY["num_rounds"], TINY["pseudo_label_interval"]
    assert state["baseline"]["trainer"]["iteration"] == w
    assert state["self_training"]["trainer"]["iteration"] == w + r * p
    assert state["two_step_semi"]["trainer"]["iteration"] == w + r * p + p
    # the two-step run validated and kept a best model in its fine-tuning phase
    assert "finetune" in state["two_step_semi"]["best_model_per_phase"]["best"]
    # self-training refreshed its pseudo-labels once per round; two-step semi once only
    assert len(state["self_training"]["pseudo_label_refresh"]["history"]) == r
    assert len(state["two_step_semi"]["pseudo_label_refresh"]["history"]) == 1
    # round models: 0 (warm-up) .. r
    assert [round_model_path(outs["self_training"], k).is_file() for k in range(r + 2)] == [True] * (r + 1) + [False]
    # every method shares the warm-up: the baseline's final model is self-training's round-0 model
    base = torch.load(outs["baseline"] / "model.pt", weights_only=True)
    round0 = torch.load(round_model_path(outs["self_training"], 0), weights_only=True)
    assert base.keys() == round0.keys() and all(torch.equal(base[k], round0[k]) for k in base)


# --------------------------------------------------------------------------------------------
# harness pieces
# --------------------------------------------------------------------------------------------


def test_plan_runs_folders_seeds_and_method_precedence(phantom, tmp_path):
    with pytest.warns(UserWarning, match="self_training"):
        runs = plan_runs(ExperimentSpec(BUNDLES["acdc"], "tr1", ["c2", "7"], ["self_training", "plc_inter"], phantom,
                                        tmp_path, split="random", overrides={"lambda_cont": 1.0, "crop_size": 32},
                                        device="cpu"))
    assert [r.name for r in runs] == ["self_training/c2", "self_training/7", "plc_inter/c2", "plc_inter/7"]
    assert len({r.settings["output_dir"] for r in runs}) == 4
    assert {r.settings["cache_dir"] for r in runs} == {str(tmp_path.resolve() / "cache")}
    assert [r.settings["split_seed"] for r in runs] == [2, 7, 2, 7]
    st, plc = runs[0], runs[2]
    assert "lambda_cont" not in st.settings and st.dropped == {"lambda_cont": 1.0}
    assert plc.settings["lambda_cont"] == 1.0 and plc.settings["crop_size"] == 32 == st.settings["crop_size"]
    paper = plan_runs(ExperimentSpec(BUNDLES["acdc"], "tr2", ["c3"], ["baseline"], phantom, tmp_path))
    assert paper[0].settings["combo"] == "c3" and paper[0].settings["split"] == "paper"
    assert "split_seed" not in paper[0].settings
    with pytest.raises(ValueError, match="output_dir"):
        ExperimentSpec(BUNDLES["acdc"], "tr1", ["c1"], ["baseline"], phantom, tmp_path, overrides={"output_dir": "x"})
    with pytest.raises(FileNotFoundError):
        ExperimentSpec(BUNDLES["acdc"], "tr1", ["c1"], ["baseline"], tmp_path / "missing", tmp_path)
    with pytest.raises(FileNotFoundError, match="available"):
        ExperimentSpec(BUNDLES["acdc"], "tr1", ["c1"], ["no_such_method"], phantom, tmp_path)
    with pytest.raises(ValueError, match="split seed"):
        ExperimentSpec(BUNDLES["acdc"], "tr1", ["first"], ["baseline"], phantom, tmp_path, split="random")
    with pytest.raises(ValueError, match="split seed"):
        combo_split_seed("first")
    with pytest.raises(ValueError, match="dataset_dir"):
        experiment(bundle=str(BUNDLES["acdc"]), output_dir=str(tmp_path))
    # fire passes `--combos c1,c2` as a tuple and `--combos 3` as an int
    assert _as_list(("c1", "c2")) == ["c1", "c2"] and _as_list("a, b,") == ["a", "b"] and _as_list(3) == ["3"]


def test_bundle_command_values_parse_back_as_bundle_values():
    settings = {"n4": False, "channels": [4, 8], "device": "$torch.device('cpu')", "lambda_cont": 0.5,
                "label_aliases": None, "reader_options": {"frames": "ed"}}
    cmd = bundle_command(["a.json", "b.json"], "training", settings)
    assert cmd[1:5] == ["-m", "monai.bundle", "run", "training"]
    parsed = {cmd[i][2:]: fire_parser.DefaultParseValue(cmd[i + 1]) for i in range(7, len(cmd), 2)}
    assert parsed == settings  # in particular n4 is the bool False, not the (truthy) string "false"


def test_sample_pixels_per_class_matches_counts():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (3, 9, 7), generator=g)
    labels[labels == 2] = 0
    labels[0, 0, 0] = 2  # a single pixel of class 2
    idx = sample_pixels_per_class(labels, [1, 2, 3], per_class=5, generator=torch.Generator().manual_seed(1))
    picked = labels.reshape(-1)[idx]
    assert idx.unique().numel() == idx.numel()
    for k, expected in ((1, 5), (2, 1), (3, 5)):
        assert int((picked == k).sum()) == min(expected, int((labels == k).sum()))
    assert not bool((picked == 0).any())
    again = sample_pixels_per_class(labels, [1, 2, 3], per_class=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(idx, again)


def test_paper_values_and_aggregate():
    assert paper_dice("acdc", "tr1", "plc_intra") == 0.761
    assert paper_dice("MMWHS", "tr8", "two_step_semi") == 0.804
    assert paper_dice("prostate", "tr2", "baseline") == 0.550
    assert paper_dice("acdc", "tr1", "not_in_paper") is None
    summary = lambda d, hd: {"structures": [{"structure": "RV", "dice_mean": d, "hd95_mm_mean": hd, "asd_mm_mean": None}],
                             "mean_foreground_dice": {"mean": d}}
    results = [
        {"method": "baseline", "mean_foreground_dice": 0.2, "summary": summary(0.2, 10.0), "round_dice": {}},
        {"method": "baseline", "mean_foreground_dice": 0.4, "summary": summary(0.4, None), "round_dice": {}},
        {"method": "mine", "mean_foreground_dice": 0.5, "summary": summary(0.5, 3.0), "round_dice": {0: 0.1, 1: 0.3}},
    ]
    rows = aggregate(results, ["baseline", "mine"], "acdc", "tr2")
    assert rows[0]["dice_mean"] == pytest.approx(0.3) and rows[0]["dice_std"] == pytest.approx(0.1)
    assert rows[0]["paper_dice"] == 0.702 and rows[0]["paper_table"] == "Table I"
    assert rows[0]["structures"]["RV"]["hd95_mean"] == 10.0 and rows[0]["structures"]["RV"]["hd95_n"] == 1
    assert rows[0]["structures"]["RV"]["asd_mean"] is None
    assert rows[1]["paper_dice"] is None and rows[1]["rounds"][1]["mean"] == pytest.approx(0.3)


@pytest.mark.slow
def test_harness_end_to_end_and_resume(phantom, tmp_path):
    out = tmp_path / "experiment"
    spec = ExperimentSpec(BUNDLES["acdc"], "tr1", ["c1"], ["self_training", "plc_inter"], phantom, out, split="random",
                          overrides=TINY, device="cpu")
    launch = LaunchOptions(parallel=2, threads=1)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        result = run_experiment(spec, launch)
    first_log = buffer.getvalue()
    # two slots: both runs start at once, each in its own worker process
    assert re.search(r"\[0/2 done, 1 running, 0 failed \| elapsed [0-9:]+ \| ETA unknown\] self_training/c1: started "
                     r"\(threads 1\)", first_log)
    assert re.search(r"\[0/2 done, 2 running, 0 failed \| elapsed [0-9:]+ \| ETA unknown\] plc_inter/c1: started", first_log)
    assert "    self_training/c1 | training\n" in first_log and "    plc_inter/c1 | training\n" in first_log
    assert re.search(r"\[1/2 done, 1 running, 0 failed \| elapsed [0-9:]+ \| ETA [0-9:]+\] \S+/c1: finished in", first_log)
    assert re.search(r"\[2/2 done, 0 running, 0 failed .*\] \S+/c1: finished in", first_log)
    for name in ("results.md", "results.csv", "runs.csv", "results.json"):
        assert (out / name).is_file()
    table = (out / "results.md").read_text()
    assert "| Self-training [9] |" in table and "| Pseudo-labels joint Tr. (inter) |" in table
    assert "0.690 (Table I)" in table and "0.759 (Table I)" in table  # the paper's ACDC tr1 values
    assert "round 2" in table
    # which phase each reported model came from, read from the run's best_models.json
    assert "## Which model each run reports" in table
    for run in result["runs"]:
        best = json.loads((Path(run["run_dir"]) / "models" / "best_models.json").read_text())
        assert run["model_phase"] == best["model.pt"]["phase"] == "joint"  # the default model_selection: final_phase
        assert run["model_val_dice"] == best["model.pt"]["metric"]
        assert set(run["val_best"]) == {"warmup", "round 1", "round 2"}
        assert f"| {run['method']} | c1 | joint (iteration {run['model_iteration']}) |" in table
    for fig in ("round_dice.png", "tsne_c1.png", "examples_c1.png"):
        path = out / "figures" / fig
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["runs"]) == 2 and set(saved["runs"][0]["round_dice"]) == {"0", "1", "2"}
    for run in result["runs"]:
        assert 0.0 <= run["mean_foreground_dice"] <= 1.0
    watched = [out / "runs" / m / "c1" / f for m in ("self_training", "plc_inter")
               for f in ("eval/summary.json", "models/model.pt", "train_done.json", "eval_rounds/round_2/summary.json")]
    watched += [out / "figures" / "tsne_c1.png"]
    mtimes = [p.stat().st_mtime_ns for p in watched]

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        again = run_experiment(spec, launch)
    second_log = buffer.getvalue()
    assert second_log.count("finished earlier") == 2 and "| training" not in second_log and "started" not in second_log
    assert [p.stat().st_mtime_ns for p in watched] == mtimes
    assert again["meta"]["executed_runs"] == 0
    assert [r["mean_foreground_dice"] for r in again["runs"]] == [r["mean_foreground_dice"] for r in result["runs"]]
