from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from services.enclave_proxy.settings import ProxySettings

PRODUCTION: dict[str, Any] = {
    "environment": "production",
    "amqp_url": "amqps://proxy:s3cret-long@broker.internal:5671/",
    "worker_transport": "vsock",
    "relay_transport": "vsock",
}


def test_settings_defaults_are_development_safe() -> None:
    settings = ProxySettings()

    assert settings.environment == "development"
    assert "guest" not in repr(settings)
    assert settings.kms_upstream() == ("kms.us-east-1.amazonaws.com", 443)


def test_settings_read_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBSCURA_PROXY_TOPOLOGY_PREFIX", "t1")
    monkeypatch.setenv("OBSCURA_PROXY_DELIVERY_LIMIT", "2")

    topology = ProxySettings().topology()

    assert topology.jobs_queue == "t1.jobs"
    assert topology.delivery_limit == 2


def test_settings_refuse_placeholder_amqp_password_in_production() -> None:
    with pytest.raises(ValidationError, match="placeholder password"):
        ProxySettings(**(PRODUCTION | {"amqp_url": "amqp://guest:guest@h:5672/"}))


def test_settings_refuse_tcp_in_production() -> None:
    with pytest.raises(ValidationError, match="vsock"):
        ProxySettings(**(PRODUCTION | {"worker_transport": "tcp"}))


def test_settings_refuse_loopback_kms_upstream_in_production() -> None:
    with pytest.raises(ValidationError, match="loopback"):
        ProxySettings(**(PRODUCTION | {"kms_upstream_host": "127.0.0.1"}))


def test_settings_accept_a_real_production_configuration() -> None:
    settings = ProxySettings(**PRODUCTION, s3_region="eu-west-1")

    assert settings.kms_upstream() == ("kms.eu-west-1.amazonaws.com", 443)
    assert "s3cret-long" not in repr(settings)


def test_settings_refuse_half_a_key_pair() -> None:
    with pytest.raises(ValidationError, match="set together"):
        ProxySettings(worker_access_key_id="AKIAEXAMPLE")


def test_settings_refuse_non_positive_job_timeout() -> None:
    with pytest.raises(ValidationError):
        ProxySettings(job_timeout_s=0)
