"""The kfp 2.5 and 2.17 round trips of the compiled package (tests/kfp_roundtrip.py, issue 22).

kfp 2.17 runs in its own venv, .venv-kfp217 (`make kfp-venv KFP=2.17`, from
requirements/kfp217.lock through the same uv and index as `make setup-test`; ~10 s from an
empty uv cache): its protobuf 6 cannot share .venv with TFX 1.16's 3.20.3. The test builds it
when missing and is skipped only when the index cannot provide a locked package (uv's
refusal is quoted in the reason); any other failure to build it fails. kfp 2.5 is .venv's own.
One compile of infra/kubeflow.example.yaml (`deblur compile`, ~10 s) serves both.
"""
import os
import subprocess
import sys

import pytest

from tests import kfp_roundtrip as rt


def _kfp_python(version: str) -> str:
    if version == "2.5":  # TFX 1.16's pin, in the project's .venv
        return sys.executable
    venv = ".venv-kfp" + version.replace(".", "")
    r = subprocess.run(["make", "--no-print-directory", "kfp-venv", f"KFP={version}"],
                       cwd=rt.REPO_ROOT, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        refusal = rt.index_refusal(r.stdout + r.stderr)
        if refusal:
            pytest.skip(f"the package index cannot provide kfp {version} "
                        f"(requirements/kfp{version.replace('.', '')}.lock): {refusal}")
        pytest.fail(f"make kfp-venv KFP={version} failed ({r.returncode}):\n"
                    f"{(r.stdout + r.stderr)[-2000:]}")
    return os.path.join(rt.REPO_ROOT, venv, "bin", "python")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return rt.compile_spec(str(tmp_path_factory.mktemp("compiled")))


@pytest.mark.slow
@pytest.mark.parametrize("version", ["2.5", "2.17"])
def test_the_package_round_trips_through_kfp(version, compiled, tmp_path):
    python = _kfp_python(version)
    report = rt.run(python, str(tmp_path), spec=compiled)
    assert report["versions"]["kfp"].split(".")[:2] == version.split("."), report["versions"]
    if version == "2.17":  # the reason it needs its own venv
        assert int(report["versions"]["protobuf"].split(".")[0]) >= 6, report["versions"]
    checks = {c["name"]: c for c in report["checks"]}
    assert sorted(checks) == sorted(rt.CHECKS + rt.DRIVER_CHECKS)
    failed = [f"{c['name']}: {c['detail']}" for c in report["checks"] if not c["ok"]]
    assert not failed, "\n".join(failed)
    # the run parameters the UI form shows, as `deblur compile` wrote them
    params = report["parameters"]
    assert params["train_steps"] == {"type": "NUMBER_INTEGER", "default": 100000}
    assert params["gate_input_psnr_tolerance"] == {"type": "NUMBER_DOUBLE", "default": 0.0}
    assert {"data_sources", "warm_start", "gate_ood_lpips_max", "cache"} <= set(params)
    assert report["server_requests"] > 0


def test_index_refusals_skip_and_other_failures_do_not():
    """uv's words for "the index cannot provide it" (a missing version, no network, offline),
    as printed by uv 0.5.31; anything else is a failure of the test."""
    assert rt.index_refusal(
        "  × No solution found when resolving dependencies:\n  ╰─▶ Because there is no version "
        "of kfp==2.17.3 and you require kfp==2.17.3, we can conclude ...") == (
        "No solution found when resolving dependencies:")
    assert "Failed to fetch" in rt.index_refusal(
        "error: Failed to fetch: `https://pypi.org/simple/protobuf/`\n  Caused by: Request "
        "failed after 3 retries")
    assert rt.index_refusal("Caused by: tcp connect error: Connection refused (os error 111)")
    assert rt.index_refusal("error: Python 3.10 not found (see make setup)") is None
    assert rt.index_refusal("make: *** [Makefile:66: .venv-kfp217/.stamp] Error 2") is None
