"""The typed pipeline config: files, --set overrides, errors."""
from __future__ import annotations

import json

import pytest

from pipelines import config as C


def test_overrides_keep_types_and_nest(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"training": {"steps": 10}, "registry": {"model_name": "m"}}))
    cfg = C.load(str(path), ["training.steps=300", "gate.ood_lpips_max=0.4",
                             "runner.enable_cache=true", "training.warm_start=latest_blessed",
                             "evaluation.grid=[{sampler: ddim, steps: 5, max_noise: 0.5}]"])
    assert cfg.training.steps == 300 and cfg.registry.model_name == "m"
    assert cfg.gate.ood_lpips_max == 0.4 and cfg.runner.enable_cache is True
    assert cfg.training.warm_start == "latest_blessed"
    assert cfg.evaluation.settings()[0].key == "ddim-T5-n0.5-K1"


@pytest.mark.parametrize("override,message", [
    ("training.stepz=3", "training: unknown key(s) stepz"),
    ("training", "expected KEY=VALUE"),
    ("runner.work_dir.x=1", "runner.work_dir: expected str, got dict"),
    ("training.steps=many", "training.steps: expected int, got str"),
    ("gate.ood_lpips_max=yes", "gate.ood_lpips_max: expected float, got bool"),
    ("gate.baseline=mlmd", "baseline must be 'ml-metadata' or 'registry'"),
    ("evaluation.grid=[{max_noise: 2}]", "max_noise must be in (0, 1]"),
    ("training.warm_start=latest", "training.warm_start must be one of none, latest_blessed"),
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
