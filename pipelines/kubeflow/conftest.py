"""The fixture the Kubeflow client tests share (kubeflow_test.py, runs_test.py)."""
import pytest


@pytest.fixture()
def kfp_server():
    """tests/fake_kfp_api.py on 127.0.0.1: every request checked as the API server checks it;
    stopped at teardown, which fails on any request the real API would refuse."""
    from tests import fake_kfp_api

    srv = fake_kfp_api.start()
    yield srv
    fake_kfp_api.stop(srv)
    assert srv.errors == [], srv.errors
