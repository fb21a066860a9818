"""The typed pipeline config: files, --set overrides, errors."""
from __future__ import annotations

import json
import os

import pytest

from pipelines import config as C


def test_overrides_keep_types_and_nest(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"training": {"train": {"steps": 10}},
                                "registry": {"model_name": "m"}}))
    cfg = C.load(str(path), ["training.train.steps=300", "gate.ood_lpips_max=0.4",
                             "runner.enable_cache=true", "training.warm_start=latest_blessed",
                             "evaluation.grid=[{sampler: ddim, steps: 5, max_noise: 0.5}]"])
    assert cfg.training.train == {"steps": 300} and cfg.registry.model_name == "m"
    assert cfg.gate.ood_lpips_max == 0.4 and cfg.runner.enable_cache is True
    assert cfg.training.warm_start == "latest_blessed"
    assert cfg.evaluation.settings()[0].key == "ddim-T5-n0.5-K1"


@pytest.mark.parametrize("override,message", [
    ("training.stepz=3", "training: unknown key(s) stepz"),
    ("training", "expected KEY=VALUE"),
    ("runner.work_dir.x=1", "runner.work_dir: expected str, got dict"),
    ("training.train.steps=many", "training.train.steps must be an integer >= 1, got 'many'"),
    ("training.train=5", "training.train must map train fields to values, e.g. {steps: 1500}"),
    ("gate.ood_lpips_max=yes", "gate.ood_lpips_max: expected float, got bool"),
    ("gate.baseline=mlmd", "baseline must be 'ml-metadata' or 'registry'"),
    ("evaluation.grid=[{max_noise: 2}]", "max_noise must be in (0, 1]"),
    ("training.warm_start=latest", "training.warm_start must be none, latest_blessed or a "
                                   "registry model ref"),
    ("ingest.span_window=-1", "span_window must be an integer >= 0"),
    ("data.sources=[{layout: folder, root: /d, span_pattern: daily}]", "span_pattern 'daily'"),
    ("data.synthetic.size=128", "data.synthetic: size must be [height, width], two integers "
                                ">= 16, e.g. [256, 256]; got 128"),
    ("data.synthetic.size=[128]", "got [128]"),
    ("data.synthetic.size=[128, x]", "got [128, 'x']"),
])
def test_override_errors(override, message):
    with pytest.raises(C.ConfigError, match=None) as e:
        C.load(None, [override])
    assert message in str(e.value)


# ---- one spelling per knob (issue 23.5, docs/configuration.md) ----------------------------------
EXAMPLE = os.path.join(C.REPO_ROOT, "infra", "kubeflow.example.yaml")


@pytest.mark.parametrize("override,message", [
    # the old spellings: one line naming the new one
    ("training.steps=300", "training.steps is now training.train.steps, as deblur train --set "
                           "train.steps (docs/configuration.md)"),
    ("training.overrides.train.global_batch_size=2", "training.overrides.train.global_batch_size "
     "is now training.train.global_batch_size, as deblur train --set train.global_batch_size"),
    ("training.overrides={}", "training.overrides.SECTION.FIELD is now training.SECTION.FIELD"),
    ("data.train_split=big", "data.train_split is now training.data.train_split, as deblur "
                             "train --set data.train_split"),
    ("evaluation.train_split=big", "evaluation.train_split is now training.data.train_split"),
    ("kubeflow.experiment=deblur", "kubeflow.experiment is now kubeflow.kfp_experiment"),
    # `deblur train --set`'s spelling, or a trainer field in the wrong place: where it is
    ("train.steps=300", "train.steps is deblur train's spelling; the pipeline config's is "
                        "training.train.steps"),
    ("model.dropout=0.1", "the pipeline config's is training.model.dropout"),
    ("experiment=local", "the experiment preset is training.experiment"),
    ("training.global_batch_size=2", "global_batch_size is a field of the trainer's train "
     "section: training.train.global_batch_size (as deblur train --set train.global_batch_size)"),
    ("data.crop_size=64", "crop_size is the trainer's: training.data.crop_size"),
])
def test_a_knob_in_another_spelling_is_refused_naming_the_right_one(override, message):
    with pytest.raises(C.ConfigError) as e:
        C.load(None, [override])
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_an_old_config_file_fails_naming_every_new_spelling(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("training:\n  experiment: tiny\n  steps: 50\n"
                    "  overrides: {train: {global_batch_size: 2}, model: {dropout: 0.1}}\n")
    with pytest.raises(C.ConfigError) as e:
        C.load(str(path))
    assert str(e.value) == (
        "training.steps is now training.train.steps, as deblur train --set train.steps; "
        "training.overrides.train.global_batch_size is now training.train.global_batch_size, as "
        "deblur train --set train.global_batch_size; training.overrides.model.dropout is now "
        "training.model.dropout, as deblur train --set model.dropout (docs/configuration.md)")


def test_trainer_sections_merge_over_the_defaults():
    """A section named in a file or a --set keeps the fields it does not name: the default
    experiment's 1500 steps stay when only the batch size is set."""
    cfg = C.load(None, ["training.train.global_batch_size=2", "training.model.dropout=0.1"])
    assert cfg.training.experiment == "local-finetune"
    assert cfg.training.train == {"global_batch_size": 2}
    assert cfg.training.experiment_overrides() == {
        "model": {"dropout": 0.1}, "train": {"global_batch_size": 2}}
    exp = cfg.training.build_experiment()
    assert (exp.train.steps, exp.train.global_batch_size, exp.model.dropout) == (1500, 2, 0.1)
    assert C.from_dict(cfg.to_dict()) == cfg  # what the Kubeflow runner compiles reads back
    assert "train_split" not in cfg.to_dict()["evaluation"]


def test_the_default_experiment_is_the_local_fine_tune_and_steps_have_one_source():
    """The pipeline's default training is the local-finetune experiment: the local experiment's
    network, data and recipe, 1500 steps beyond its shipped base model (models/local). Its step
    count is the experiment's own (no pipeline default that overrides every experiment's): a
    config that names another experiment trains that experiment's steps, and
    training.train.steps (the train_steps run parameter's field) overrides either."""
    from trainer import experiments, warm_start

    default = C.load(None, []).training
    exp, local = default.build_experiment(), experiments.get("local")
    assert default.train == {} and exp.train.steps == 1500
    assert (exp.model, exp.diffusion, exp.data) == (local.model, local.diffusion, local.data)
    assert exp.train == local.replace(train={"steps": 1500}).train
    assert warm_start.shipped_folder("local-finetune") == warm_start.shipped_folder("local") \
        == os.path.join(warm_start.SHIPPED_MODELS, "local")
    assert C.load(None, ["training.experiment=tiny"]).training.build_experiment().train.steps \
        == experiments.get("tiny").train.steps
    assert C.load(None, ["training.train.steps=7"]).training.build_experiment().train.steps == 7


def test_the_same_path_with_one_prefix_in_both_commands():
    """--set SECTION.FIELD in `deblur train` is --set training.SECTION.FIELD in run-local, and
    builds the same experiment."""
    from deblur import cli
    from deblur.commands import train as train_commands

    sets = ["train.steps=7", "train.global_batch_size=2", "model.dropout=0.1",
            "data.crop_size=32", "diffusion.num_train_steps=100"]
    args = cli.build_parser().parse_args(
        ["train", "--examples", "e", "--out", "o", "--experiment", "local"]
        + [a for s in sets for a in ("--set", s)])
    cfg = C.load(None, ["training.experiment=local"] + [f"training.{s}" for s in sets])
    assert train_commands.train_experiment(args) == cfg.training.build_experiment()


def test_the_example_kubeflow_config_has_the_new_spellings():
    cfg = C.load(EXAMPLE)
    assert cfg.training.train["steps"] == 100000 and cfg.kubeflow["kfp_experiment"] == "deblur"


def test_respell_moves_the_old_spellings_of_a_compiled_config():
    """A package compiled by the previous release carries its config in the run's check task
    (pipelines/kubeflow/check.py), where nobody can edit it."""
    old = {"data": {"sources": [], "train_split": "train"},
           "training": {"experiment": "tiny", "steps": 50, "warm_start": "none",
                        "overrides": {"train": {"global_batch_size": 2},
                                      "model": {"dropout": 0.1}}},
           "evaluation": {"max_images_per_split": 2, "train_split": "train"},
           "kubeflow": {"experiment": "deblur"}}
    cfg = C.from_dict(C.respell(old))
    assert cfg.training.train == {"steps": 50, "global_batch_size": 2}
    assert cfg.training.model == {"dropout": 0.1} and cfg.training.data == {"train_split": "train"}
    assert cfg.evaluation.max_images_per_split == 2 and cfg.kubeflow["kfp_experiment"] == "deblur"
    assert C.respell(cfg.to_dict()) == cfg.to_dict()  # a current config is left as it is


def test_the_training_split_is_one_knob():
    """training.data.train_split is what the Trainer trains on (its TFX train_args too), and
    what the evaluator leaves out; train.steps travels in train_args, not in the overrides."""
    from pipelines.pipeline import create_pipeline

    cfg = C.load(None, ["training.data.train_split=big", "training.train.steps=7",
                        "training.train.global_batch_size=2"])
    p = create_pipeline(cfg)
    by_id = {c.id: c for c in p.components}
    trainer = by_id["Trainer"].exec_properties
    assert json.loads(trainer["train_args"]) == {"splits": ["big"], "num_steps": 7}
    custom = json.loads(trainer["custom_config"])
    assert custom["overrides"] == {"data": {"train_split": "big"},
                                   "train": {"global_batch_size": 2}}
    assert json.loads(by_id["DeblurEvaluator"].exec_properties["eval_config"])["train_split"] == "big"


def test_run_local_refuses_a_crop_larger_than_the_images_before_anything_runs(tmp_path, capsys):
    """Issue 35.5: a training crop larger than the images was a traceback in the Trainer,
    after the ingest. run-local knows the synthetic images' size, and for real sources the
    smallest training image the ingest lets through (ingest.train_crop_size)."""
    from deblur import cli

    src = tmp_path / "src" / "GOPRO_Large" / "train" / "SEQ" / "blur"
    src.mkdir(parents=True)
    work = tmp_path / "w"
    for sets, message in (
            (["data.synthetic.size=[64, 64]", "training.data.crop_size=128"],
             "training.data.crop_size 128 is larger than the synthetic images "
             "(data.synthetic.size [64, 64]); choose training.data.crop_size <= 64 or a larger "
             "data.synthetic.size"),
            (["data.sources=[{layout: gopro, root: " + str(tmp_path / "src") + "}]",
              "training.data.crop_size=256"],
             "training.data.crop_size 256 is larger than ingest.train_crop_size 128, the "
             "smallest training image the ingest lets through: set ingest.train_crop_size to "
             "256 (smaller training images are then quarantined) or training.data.crop_size "
             "<= 128")):
        argv = ["run-local", "--work-dir", str(work)]
        for item in sets:
            argv += ["--set", item]
        assert cli.main(argv) == cli.EXIT_USAGE
        assert capsys.readouterr().err == f"deblur: error: {message}\n"
        assert not work.exists()
    # what fits passes: the same crop with the ingest's bound raised
    cfg = C.load(None, ["data.sources=[{layout: gopro, root: " + str(tmp_path / "src") + "}]",
                        "training.data.crop_size=256", "ingest.train_crop_size=256"])
    assert cfg.training.build_experiment().data.crop_size == 256


def test_the_old_spellings_leave_in_0_2_0():
    """CHANGELOG.md: the refusal of the spellings renamed on 2026-12-02 and respell(), for the
    packages compiled before then, are in 0.1.0 and go in 0.2.0. Not vacuous: the version is
    read as core/version.py reads it, and bumping it with them still here fails."""
    from core.version import package_version

    major, minor = (int(p) for p in package_version().split(".")[:2])
    assert (major, minor) < (0, 2) or not hasattr(C, "RENAMED"), (
        "0.2.0 removes the old spellings (CHANGELOG.md): RENAMED, old_spellings, respell")
