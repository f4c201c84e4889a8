"""Property-based requests from the service's own OpenAPI schema (schemathesis) against a real
``bentoml serve``: whatever a client sends, the answer is never a 5xx. The service has data roots, a
campaign, scores, a label token and a user, so the generated requests reach the endpoints' logic."""

from __future__ import annotations

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from anomalymatch.campaign_images import setup_campaign
from anomalymatch.config import load_config
from anomalymatch.labelstore import LabelStore
from anomalymatch.users import add_user
from serving.launch import start_service
from tests.helpers.serving import shared_registry, write_pngs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    registry = shared_registry(tmp_path_factory)
    root = tmp_path_factory.mktemp("fuzz")
    ids = [p.name for p in write_pngs(root / "archive", 12, size=40)]
    config = load_config(
        None,
        {
            "data_dir": str(root / "home"),
            "tracking.tracking_uri": registry.tracking_uri,
            "serving.model": "1",
            "serving.port": 0,
            "serving.reload_interval_s": 0,
            "serving.data_roots": [str(root / "archive")],
            "serving.max_upload_bytes": 1_000_000,
        },
    )
    with LabelStore.from_config(config.labelstore, config.data_path) as store:
        setup_campaign(store, "fuzz", [root / "archive"])
        store.add_scores("1", ids, np.linspace(0, 1, len(ids)))
        add_user(store, "ada", "admin")
    with start_service(config, log_path=root / "serve.log") as svc:
        yield svc


def test_no_request_gets_a_5xx(service):
    schema = schemathesis.openapi.from_url(f"{service.url}/docs.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/score", "/labels", "/candidates", "/image", "/bulk_submit"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def never_5xx(case):
            response = case.call(timeout=60)
            assert response.status_code < 500, (case.path, case.body, response.status_code, response.text[:500])

        never_5xx()
