"""AWS Signature Version 4 for the KMS stand-in: verify callers, sign upstream calls.

The canonical request is rebuilt from the method, the path as sent, the query, the
headers named in ``SignedHeaders`` and the SHA-256 of the body; the signing key is
the HMAC chain over date, region and service. Only the ``Authorization`` header
form is accepted (no presigned query strings), which is what the SDKs send to KMS.
"""

from __future__ import annotations

import hashlib
import hmac
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, quote

from shared.errors import CallerError, Reason

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_CLOCK_SKEW = timedelta(minutes=15)
_AMZ_DATE = "%Y%m%dT%H%M%SZ"
_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256\s+"
    r"Credential=(?P<akid>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/,\s]+)"
    r"/(?P<service>[^/,\s]+)/aws4_request,\s*"
    r"SignedHeaders=(?P<headers>[a-z0-9;._-]+),\s*"
    r"Signature=(?P<signature>[0-9a-f]{64})$"
)


class SignatureError(CallerError):
    """A request's signature is missing, malformed, stale or wrong.

    ``code`` is the KMS error type the gate answers with.
    """

    default_reason = Reason.ACCESS_DENIED

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class HttpRequest:
    """The signed parts of an HTTP request; header names are lowercase."""

    method: str
    raw_path: str
    query: str
    headers: Mapping[str, str]
    body: bytes = field(repr=False)


@dataclass(frozen=True)
class Authorization:
    """The parsed ``Authorization`` header of a SigV4-signed request."""

    access_key_id: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


def parse_authorization(header: str | None) -> Authorization:
    """Read the access key id, scope and signature from an Authorization header."""
    if not header:
        raise SignatureError(
            "MissingAuthenticationTokenException",
            "The request carries no Authorization header; sign it with SigV4.",
        )
    match = _AUTHORIZATION.match(header.strip())
    if match is None:
        raise SignatureError(
            "IncompleteSignatureException",
            f"The Authorization header {header[:40]!r}… is not a SigV4 header;"
            " sign the request with AWS4-HMAC-SHA256.",
        )
    return Authorization(
        access_key_id=match["akid"],
        date=match["date"],
        region=match["region"],
        service=match["service"],
        signed_headers=tuple(match["headers"].split(";")),
        signature=match["signature"],
    )


def verify(
    request: HttpRequest,
    auth: Authorization,
    secret_access_key: str,
    *,
    service: str = "kms",
    now: datetime | None = None,
) -> None:
    """Raise ``SignatureError`` unless ``auth`` signs ``request`` with the secret."""
    amz_date = _checked_date(request, auth, service, now or datetime.now(UTC))
    expected = _signature(request, auth, amz_date, secret_access_key)
    if not hmac.compare_digest(expected, auth.signature):
        raise SignatureError(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you"
            " provided; check the secret access key and the signing method.",
        )


def sign(
    request: HttpRequest,
    *,
    access_key_id: str,
    secret_access_key: str,
    region: str,
    service: str = "kms",
    now: datetime | None = None,
) -> dict[str, str]:
    """Headers to add to ``request`` (which must carry ``host``) to sign it."""
    amz_date = (now or datetime.now(UTC)).strftime(_AMZ_DATE)
    headers = {**request.headers, "x-amz-date": amz_date}
    signed = tuple(sorted(headers))
    auth = Authorization(
        access_key_id, amz_date[:8], region, service, signed, signature=""
    )
    dated = HttpRequest(
        request.method, request.raw_path, request.query, headers, request.body
    )
    signature = _signature(dated, auth, amz_date, secret_access_key)
    return {
        "x-amz-date": amz_date,
        "authorization": (
            f"{ALGORITHM} Credential={access_key_id}/{auth.scope},"
            f" SignedHeaders={';'.join(signed)}, Signature={signature}"
        ),
    }


def _checked_date(
    request: HttpRequest, auth: Authorization, service: str, now: datetime
) -> str:
    if auth.service != service:
        raise SignatureError(
            "InvalidSignatureException",
            f"The credential scope names service {auth.service!r}; sign for"
            f" {service!r}.",
        )
    amz_date = request.headers.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(amz_date, _AMZ_DATE).replace(tzinfo=UTC)
    except ValueError:
        raise SignatureError(
            "IncompleteSignatureException",
            f"X-Amz-Date {amz_date!r} is not a yyyymmddThhmmssZ timestamp;"
            " send the one the signer used.",
        ) from None
    if "x-amz-date" not in auth.signed_headers or amz_date[:8] != auth.date:
        raise SignatureError(
            "IncompleteSignatureException",
            f"X-Amz-Date {amz_date!r} is unsigned or outside the credential scope"
            f" {auth.scope!r}; sign it with the same date.",
        )
    if abs(now - signed_at) > MAX_CLOCK_SKEW:
        raise SignatureError(
            "InvalidSignatureException",
            f"Signature expired: {amz_date} is more than 15 minutes from the"
            f" server time {now.strftime(_AMZ_DATE)}; fix the client clock.",
        )
    return amz_date


def _signature(
    request: HttpRequest, auth: Authorization, amz_date: str, secret: str
) -> str:
    canonical = _canonical_request(request, auth.signed_headers)
    string_to_sign = "\n".join(
        [ALGORITHM, amz_date, auth.scope, _sha256_hex(canonical.encode())]
    )
    key = _signing_key(secret, auth.date, auth.region, auth.service)
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def _canonical_request(request: HttpRequest, signed_headers: tuple[str, ...]) -> str:
    missing = [name for name in signed_headers if name not in request.headers]
    if missing:
        raise SignatureError(
            "IncompleteSignatureException",
            f"SignedHeaders names {missing[0]!r}, which the request does not carry;"
            " sign only the headers you send.",
        )
    headers = "".join(
        f"{name}:{_trimmed(request.headers[name])}\n" for name in signed_headers
    )
    payload = request.headers.get("x-amz-content-sha256") or _sha256_hex(request.body)
    return "\n".join(
        [
            request.method.upper(),
            _canonical_path(request.raw_path),
            _canonical_query(request.query),
            headers,
            ";".join(signed_headers),
            payload,
        ]
    )


def _canonical_path(raw_path: str) -> str:
    # Services other than S3 normalise the path and URI-encode the already
    # encoded form once more, so "%20" is signed as "%2520".
    path = posixpath.normpath(raw_path or "/")
    if raw_path.endswith("/") and not path.endswith("/"):
        path += "/"
    path = "/" + path.lstrip("/")
    return quote(path, safe="/~")


def _canonical_query(query: str) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    encoded = sorted(
        (quote(key, safe="-_.~"), quote(value, safe="-_.~")) for key, value in pairs
    )
    return "&".join(f"{key}={value}" for key, value in encoded)


def _trimmed(value: str) -> str:
    return " ".join(value.split())


def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = f"AWS4{secret}".encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
