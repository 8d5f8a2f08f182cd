"""TLS to SQL Server: the MSSQL_* settings reach both drivers the same way."""

from __future__ import annotations

from pathlib import Path

import pymssql
import pytest
import sqlalchemy as sa

from analytics_shared.settings import SettingsError, load_settings
from etl_service.settings import EtlSettings
from etl_service.source import MssqlTls, connectorx_url

MSSQL = {
    "MSSQL_HOST": "db.internal",
    "MSSQL_DATABASE": "analytics_source",
    "MSSQL_USERNAME": "analytics_etl",
    "MSSQL_PASSWORD": "p@ss:w/rd?&",
}


def urls(tmp_path: Path, **env: str) -> tuple[str, str]:
    settings = load_settings(EtlSettings, DATA_DIR=str(tmp_path), **MSSQL, **env)
    tls = MssqlTls(settings.mssql_trust_server_certificate, settings.mssql_ca_file)
    return settings.resolved_source_url, connectorx_url(settings.resolved_source_url, tls)


def test_tls_is_required_by_default_and_the_certificate_checked(tmp_path):
    source, extractor = urls(tmp_path)
    # SQLAlchemy hands the query to pymssql.connect() as keywords.
    kwargs = sa.create_engine(source).dialect.create_connect_args(sa.make_url(source))[1]
    assert kwargs["encryption"] == "require"
    assert kwargs["password"] == MSSQL["MSSQL_PASSWORD"]
    cx = sa.make_url(extractor)
    assert cx.drivername == "mssql" and dict(cx.query) == {"encrypt": "true"}
    assert cx.password == MSSQL["MSSQL_PASSWORD"] and cx.database == "analytics_source"


def test_trusting_a_self_signed_certificate_is_explicit(tmp_path):
    _, extractor = urls(tmp_path, MSSQL_TRUST_SERVER_CERTIFICATE="true")
    assert dict(sa.make_url(extractor).query) == {
        "encrypt": "true",
        "trust_server_certificate": "true",
    }


def test_a_private_ca_is_passed_to_the_extractor(tmp_path):
    ca = tmp_path / "company-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    _, extractor = urls(tmp_path, MSSQL_CA_FILE=str(ca))
    assert dict(sa.make_url(extractor).query) == {
        "encrypt": "true",
        "trust_server_certificate_ca": str(ca),
    }


def test_a_missing_ca_file_is_a_configuration_error(tmp_path):
    with pytest.raises(SettingsError, match="MSSQL_CA_FILE"):
        urls(tmp_path, MSSQL_CA_FILE=str(tmp_path / "missing.pem"))


def test_encryption_can_be_left_to_the_server(tmp_path):
    source, extractor = urls(tmp_path, MSSQL_ENCRYPT="false")
    assert sa.make_url(source).query["encryption"] == "request"
    assert dict(sa.make_url(extractor).query) == {}


def test_pymssql_accepts_the_encryption_keyword():
    # Nothing listens on port 1: a connection error, not a refused keyword.
    with pytest.raises(pymssql.OperationalError):
        pymssql.connect(
            server="127.0.0.1", port="1", user="u", password="p", encryption="require",
            login_timeout=2,
        )  # fmt: skip
