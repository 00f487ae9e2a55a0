"""SigV4 verification against requests signed by botocore itself."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from standins.sigv4 import (
    HttpRequest,
    SignatureError,
    parse_authorization,
    sign,
    verify,
)

AKID = "AKIAOBSCURATEST00001"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
URL = "http://127.0.0.1:4566/"


def _botocore_signed(
    body: bytes, *, url: str = URL, secret: str = SECRET
) -> HttpRequest:
    request = AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "TrentService.GenerateDataKey",
        },
    )
    SigV4Auth(Credentials(AKID, secret), "kms", "eu-west-1").add_auth(request)
    parts = urlsplit(url)
    headers = {name.lower(): value for name, value in request.headers.items()}
    headers["host"] = parts.netloc
    return HttpRequest("POST", parts.path or "/", parts.query, headers, body)


def _body() -> bytes:
    return json.dumps({"KeyId": "alias/hospital", "KeySpec": "AES_256"}).encode()


def _check(request: HttpRequest, secret: str = SECRET) -> None:
    auth = parse_authorization(request.headers.get("authorization"))
    verify(request, auth, secret)


def test_sigv4_accepts_botocore_signature() -> None:
    request = _botocore_signed(_body())
    auth = parse_authorization(request.headers["authorization"])

    verify(request, auth, SECRET)

    assert (auth.access_key_id, auth.region, auth.service) == (
        AKID,
        "eu-west-1",
        "kms",
    )


def test_sigv4_accepts_path_and_query_that_need_encoding() -> None:
    request = _botocore_signed(_body(), url=URL + "a%20b/c?z=1&a=x%2Fy&a=b")

    _check(request)


def test_sigv4_rejects_tampered_body() -> None:
    request = _botocore_signed(_body())
    tampered = HttpRequest(
        request.method,
        request.raw_path,
        request.query,
        request.headers,
        request.body.replace(b"hospital", b"vendor"),
    )

    with pytest.raises(SignatureError) as info:
        _check(tampered)

    assert info.value.code == "InvalidSignatureException"


def test_sigv4_rejects_tampered_signed_header() -> None:
    request = _botocore_signed(_body())
    headers = {**request.headers, "x-amz-target": "TrentService.Decrypt"}
    tampered = HttpRequest("POST", "/", "", headers, request.body)

    with pytest.raises(SignatureError) as info:
        _check(tampered)

    assert info.value.code == "InvalidSignatureException"


def test_sigv4_rejects_wrong_secret() -> None:
    request = _botocore_signed(_body(), secret="not-the-configured-secret")

    with pytest.raises(SignatureError) as info:
        _check(request)

    assert info.value.code == "InvalidSignatureException"


def test_sigv4_rejects_missing_authorization() -> None:
    with pytest.raises(SignatureError) as info:
        parse_authorization(None)

    assert info.value.code == "MissingAuthenticationTokenException"


def test_sigv4_rejects_malformed_authorization() -> None:
    with pytest.raises(SignatureError) as info:
        parse_authorization("AWS AKIDEXAMPLE:signature")

    assert info.value.code == "IncompleteSignatureException"


def test_sigv4_rejects_stale_timestamp() -> None:
    request = _botocore_signed(_body())
    auth = parse_authorization(request.headers["authorization"])
    later = datetime.now(UTC) + timedelta(minutes=20)

    with pytest.raises(SignatureError) as info:
        verify(request, auth, SECRET, now=later)

    assert "Signature expired" in str(info.value)


def test_sigv4_rejects_signed_header_absent_from_request() -> None:
    request = _botocore_signed(_body())
    headers = {k: v for k, v in request.headers.items() if k != "x-amz-target"}

    with pytest.raises(SignatureError) as info:
        _check(HttpRequest("POST", "/", "", headers, request.body))

    assert info.value.code == "IncompleteSignatureException"


def test_sigv4_sign_round_trips_through_verify() -> None:
    body = _body()
    request = HttpRequest(
        "POST", "/", "", {"host": "127.0.0.1:1", "x-amz-target": "T.Op"}, body
    )
    added = sign(request, access_key_id=AKID, secret_access_key=SECRET, region="r1")
    signed = HttpRequest("POST", "/", "", {**request.headers, **added}, body)

    _check(signed)
    with pytest.raises(SignatureError):
        _check(signed, secret=SECRET + "x")
