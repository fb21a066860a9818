"""training.warm_start as a registry ref (@production, NAME@ALIAS, NAME/N): the Trainer starts
from the version the ref names, checked like any alias target; the shipped base model stands in
for a registered one."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from components import training
from components.registry.aliases import Aliases
from components.registry.registry import Registry
from pipelines import config as config_lib
from trainer import warm_start

REPO = Path(__file__).resolve().parents[1]


def test_a_warm_start_from_an_alias(tmp_path):
    src = tmp_path / "model"
    shutil.copytree(REPO / "models" / "local", src)
    reg = Registry(str(tmp_path / "registry"))
    for _ in range(2):
        reg.push(str(src), {"blessing": {"blessed": True}, "source": {"model_uri": "mlmd://m"}})
    Aliases(reg).move("production", 1)
    source = {"registry_uri": reg.uri, "model_name": reg.model_name}

    parent = training.from_registry_ref(source, "@production")
    assert (parent.version, parent.model_uri) == (1, "mlmd://m")
    assert parent.name == "registry version 1 (deblur-icdpm@production, @production)"
    record = warm_start.plan("@production", 5, lambda: training.from_registry_ref(
        source, "@production"))
    assert record["parent"]["saved_model_dir"] == f"{reg.uri}/deblur-icdpm/1"
    start = warm_start.parent_step(warm_start.model_info(str(src)))
    assert (record["start_step"], record["target_step"]) == (start, start + 5)
    assert training.from_registry_ref(source, "deblur-icdpm/2").version == 2

    for ref, message in (("@staging", "training.warm_start @staging: alias 'staging' of "
                                      "'deblur-icdpm' is not set"),
                         ("deblur-icdpm/7", "training.warm_start deblur-icdpm/7: model "
                                            "'deblur-icdpm' in ")):
        with pytest.raises(warm_start.WarmStartError, match=message):
            warm_start.plan(ref, 5, lambda: training.from_registry_ref(source, ref))


def test_the_config_takes_a_ref_and_refuses_a_bad_one():
    cfg = config_lib.from_dict({"training": {"warm_start": "deblur-icdpm@production"}})
    assert cfg.training.warm_start == "deblur-icdpm@production"
    for bad in ("production", "@Prod", "latest"):
        with pytest.raises(ValueError, match="training.warm_start must be none, latest_blessed "
                                             "or a registry model ref"):
            config_lib.from_dict({"training": {"warm_start": bad}})
