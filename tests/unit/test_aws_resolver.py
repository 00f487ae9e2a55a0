import pytest

from services.enclave_worker.settings import WorkerSettings
from shared.aws import LoopbackResolver


async def test_loopback_resolver_sends_the_kms_name_to_the_tunnel() -> None:
    resolver = LoopbackResolver("kms.eu-west-1.amazonaws.com")
    answers = await resolver.resolve("KMS.eu-west-1.amazonaws.com", 4443)
    assert [(a["host"], a["port"], a["hostname"]) for a in answers] == [
        ("127.0.0.1", 4443, "KMS.eu-west-1.amazonaws.com")
    ]


async def test_loopback_resolver_refuses_every_other_name() -> None:
    resolver = LoopbackResolver("kms.eu-west-1.amazonaws.com")
    with pytest.raises(OSError, match="not the one endpoint"):
        await resolver.resolve("169.254.169.254", 80)


def test_worker_kms_endpoint_keeps_the_kms_name_for_tls() -> None:
    settings = WorkerSettings(aws_region="eu-west-1", kms_scheme="https")
    assert settings.kms_endpoint_url(443) == "https://kms.eu-west-1.amazonaws.com:443"
    dev = WorkerSettings(kms_scheme="http")
    assert dev.kms_endpoint_url(5000) == "http://127.0.0.1:5000"
