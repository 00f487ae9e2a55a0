"""Fixtures of the fault tests: the in-process proxy pieces of ``proxy/``."""

from tests.integration.proxy.conftest import (  # noqa: F401
    amqp,
    broker,
    bucket,
    fake_worker,
    proxy_factory,
)
