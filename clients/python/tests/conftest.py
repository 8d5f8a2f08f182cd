"""One real API (Gunicorn over a test snapshot, trusting a local issuer) for
the client tests, plus an empty one that answers 503."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from analytics_client import AnalyticsClient
from testsupport.client_api import ClientTestApi


@pytest.fixture(scope="session")
def client_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientTestApi]:
    with ClientTestApi(tmp_path_factory.mktemp("client-api")) as api:
        yield api


@pytest.fixture
def client(client_api: ClientTestApi) -> Iterator[AnalyticsClient]:
    with AnalyticsClient(client_api.url, client_api.token()) as c:
        yield c
