import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from shared.errors import PermanentDependencyError, Reason, RetryableDependencyError
from shared.kms import translate_botocore_error, translate_client_error


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": "detail"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "Decrypt",
    )


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("AccessDeniedException", Reason.ACCESS_DENIED),
        ("InvalidCiphertextException", Reason.INVALID_CIPHERTEXT),
        ("IncorrectKeyException", Reason.INVALID_CIPHERTEXT),
        ("NotFoundException", Reason.NOT_FOUND),
        ("ValidationException", Reason.INVALID_REQUEST),
    ],
)
def test_translate_client_error_permanent_codes(code: str, reason: Reason) -> None:
    error = translate_client_error(client_error(code), "Decrypt")
    assert isinstance(error, PermanentDependencyError)
    assert error.reason is reason
    assert not error.retryable
    assert code in str(error)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("ThrottlingException", Reason.THROTTLED),
        ("DependencyTimeoutException", Reason.TIMEOUT),
        ("KMSInternalException", Reason.UNAVAILABLE),
    ],
)
def test_translate_client_error_retryable_codes(code: str, reason: Reason) -> None:
    error = translate_client_error(client_error(code), "GenerateDataKey")
    assert isinstance(error, RetryableDependencyError)
    assert error.reason is reason
    assert error.retryable


def test_translate_client_error_unknown_server_error_is_retryable() -> None:
    error = translate_client_error(client_error("Weird", status=503), "Decrypt")
    assert error.retryable


def test_translate_client_error_unknown_client_error_is_permanent() -> None:
    error = translate_client_error(client_error("Weird", status=400), "Decrypt")
    assert not error.retryable


def test_translate_botocore_timeouts_are_retryable() -> None:
    timeout = translate_botocore_error(ReadTimeoutError(endpoint_url="x"), "Decrypt")
    assert timeout.reason is Reason.TIMEOUT and timeout.retryable
    down = translate_botocore_error(
        EndpointConnectionError(endpoint_url="x"), "Decrypt"
    )
    assert down.reason is Reason.UNAVAILABLE and down.retryable
