"""The fake KFP API as a pytest fixture, for the Kubeflow client tests (import it into a test
module). Not in fake_kfp_api.py, which also runs under the kfp 2.17 venv, without pytest."""
import pytest

from tests import fake_kfp_api


@pytest.fixture()
def kfp_server():
    """tests/fake_kfp_api.py on 127.0.0.1 for one test: stopped at teardown, which fails on
    any request the real API would refuse."""
    srv = fake_kfp_api.start()
    yield srv
    fake_kfp_api.stop(srv)
    assert srv.errors == [], srv.errors
