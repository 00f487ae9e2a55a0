"""The /dev/nsm client against a fake ioctl, and the simulated NSM with its dev PKI."""

from __future__ import annotations

import ctypes
import errno
import stat
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from shared.attestation import PcrPolicy, parse_attestation, verify_attestation
from shared.errors import (
    CallerError,
    PermanentDependencyError,
    RetryableDependencyError,
)
from shared.nsm import (
    NSM_IOCTL_RAW,
    DeviceNsm,
    Nsm,
    decode_attestation_response,
    encode_attestation_request,
)
from standins import nsm as simulated
from standins.nsm import DevPki, SimulatedNsm

MEASURED = {0: b"\x01" * 48, 1: b"\x02" * 48, 2: b"\x03" * 48}


class FakeDriver:
    """Plays the NSM driver: reads the request iovec, fills the response iovec."""

    def __init__(self, response: bytes | None = None, error: int | None = None) -> None:
        self.response = response
        self.error = error
        self.requests: list[Any] = []
        self.codes: list[int] = []

    def __call__(self, fd: int, code: int, message: Any) -> int:
        self.codes.append(code)
        self.requests.append(
            cbor2.loads(ctypes.string_at(message.request.addr, message.request.len))
        )
        if self.error is not None:
            raise OSError(self.error, "fake failure")
        assert self.response is not None
        assert len(self.response) <= message.response.len
        ctypes.memmove(message.response.addr, self.response, len(self.response))
        message.response.len = len(self.response)
        return 0


@pytest.fixture
def device(tmp_path: Path) -> Iterator[tuple[DeviceNsm, FakeDriver]]:
    driver = FakeDriver()
    path = tmp_path / "nsm"
    path.touch()
    with DeviceNsm.open(path, ioctl=driver) as nsm:
        yield nsm, driver


def test_nsm_ioctl_code_is_iowr_magic_0a_number_0_of_two_iovecs() -> None:
    assert NSM_IOCTL_RAW == (3 << 30) | (32 << 16) | (0x0A << 8) | 0
    assert NSM_IOCTL_RAW == 0xC0200A00


def test_encode_attestation_request_sends_absent_fields_as_null() -> None:
    request = cbor2.loads(encode_attestation_request(nonce=b"n", public_key=b"k"))

    assert request == {
        "Attestation": {"user_data": None, "nonce": b"n", "public_key": b"k"}
    }


def test_encode_attestation_request_rejects_oversized_user_data() -> None:
    with pytest.raises(CallerError, match="user_data is 513 bytes"):
        encode_attestation_request(user_data=b"x" * 513)


def test_device_nsm_attest_round_trips_through_the_ioctl(
    device: tuple[DeviceNsm, FakeDriver],
) -> None:
    nsm, driver = device
    driver.response = cbor2.dumps({"Attestation": {"document": b"\xd2cose"}})

    document = nsm.attest(user_data=b"u", nonce=b"n")

    assert document == b"\xd2cose"
    assert driver.codes == [NSM_IOCTL_RAW]
    assert driver.requests == [
        {"Attestation": {"user_data": b"u", "nonce": b"n", "public_key": None}}
    ]


def test_device_nsm_describe_pcr_returns_register_data(
    device: tuple[DeviceNsm, FakeDriver],
) -> None:
    nsm, driver = device
    driver.response = cbor2.dumps({"DescribePCR": {"lock": True, "data": b"\x07" * 48}})

    assert nsm.describe_pcr(4) == b"\x07" * 48
    assert driver.requests == [{"DescribePCR": {"index": 4}}]


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("InvalidArgument", PermanentDependencyError),
        ("InputTooLarge", PermanentDependencyError),
        ("InternalError", RetryableDependencyError),
    ],
)
def test_device_nsm_translates_error_response(
    device: tuple[DeviceNsm, FakeDriver], code: str, kind: type[Exception]
) -> None:
    nsm, driver = device
    driver.response = cbor2.dumps({"Error": code})

    with pytest.raises(kind, match=f"refused the Attestation request with {code}"):
        nsm.attest()


@pytest.mark.parametrize(
    ("number", "kind"),
    [(errno.EINTR, RetryableDependencyError), (errno.EINVAL, PermanentDependencyError)],
)
def test_device_nsm_translates_ioctl_failure(
    device: tuple[DeviceNsm, FakeDriver], number: int, kind: type[Exception]
) -> None:
    nsm, driver = device
    driver.error = number

    with pytest.raises(kind, match="NSM ioctl failed"):
        nsm.attest()


def test_decode_attestation_response_rejects_garbage_and_wrong_kind() -> None:
    with pytest.raises(PermanentDependencyError, match="not CBOR"):
        decode_attestation_response(b"\xff\xff")
    with pytest.raises(PermanentDependencyError, match="answered 'GetRandom'"):
        decode_attestation_response(cbor2.dumps({"GetRandom": {"random": b"r"}}))


def test_device_nsm_open_missing_device_says_where_to_run(tmp_path: Path) -> None:
    missing = tmp_path / "dev" / "nsm"

    with pytest.raises(PermanentDependencyError, match="does not exist; run inside"):
        DeviceNsm.open(missing)


def test_device_nsm_refuses_calls_after_close(tmp_path: Path) -> None:
    (tmp_path / "nsm").touch()
    nsm = DeviceNsm.open(tmp_path / "nsm", ioctl=FakeDriver(b""))
    nsm.close()

    with pytest.raises(PermanentDependencyError, match="closed"):
        nsm.attest()


def test_dev_pki_is_created_once_and_reused(tmp_path: Path) -> None:
    first = DevPki.load_or_create(tmp_path)
    second = DevPki.load_or_create(tmp_path)

    assert first.root_certificate == second.root_certificate
    assert first.intermediate_certificate == second.intermediate_certificate
    files = sorted((tmp_path / "nsm-pki").glob("*.pem"))
    assert len(files) == 4
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in files)


def test_dev_pki_in_another_folder_is_another_root(tmp_path: Path) -> None:
    one = DevPki.load_or_create(tmp_path / "a")
    other = DevPki.load_or_create(tmp_path / "b")

    assert one.root_certificate.public_bytes(
        Encoding.DER
    ) != other.root_certificate.public_bytes(Encoding.DER)


@pytest.fixture(scope="module")
def pki() -> DevPki:
    return DevPki.create()


def test_simulated_nsm_reports_measured_pcrs_and_zero_rest(pki: DevPki) -> None:
    nsm: Nsm = SimulatedNsm(pki, MEASURED)

    doc = verify_attestation(
        nsm.attest(), root=pki.root_certificate, policy=PcrPolicy(approved=MEASURED)
    )

    assert sorted(doc.pcrs) == list(range(16))
    assert {index: doc.pcrs[index] for index in (0, 1, 2)} == MEASURED
    assert all(doc.pcrs[index] == bytes(48) for index in range(3, 16))
    assert doc.cabundle == (pki.root_certificate, pki.intermediate_certificate)


def test_simulated_nsm_debug_mode_reports_all_zero_pcrs(pki: DevPki) -> None:
    doc = parse_attestation(SimulatedNsm(pki, MEASURED, debug=True).attest())

    assert set(doc.pcrs.values()) == {bytes(48)}


def test_simulated_nsm_gives_each_instance_its_own_leaf(pki: DevPki) -> None:
    first = parse_attestation(SimulatedNsm(pki, MEASURED).attest()).certificate
    second = parse_attestation(SimulatedNsm(pki, MEASURED).attest()).certificate

    assert first.serial_number != second.serial_number
    lifetime = first.not_valid_after_utc - first.not_valid_before_utc
    assert timedelta(hours=1) < lifetime < timedelta(hours=4)


def test_simulated_nsm_renews_leaf_near_expiry(
    pki: DevPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(simulated, "LEAF_LIFETIME", timedelta(minutes=1))
    nsm = SimulatedNsm(pki, MEASURED)

    first = parse_attestation(nsm.attest()).certificate
    second = parse_attestation(nsm.attest()).certificate

    assert first.serial_number != second.serial_number


def test_simulated_nsm_rejects_pcr_of_wrong_size(pki: DevPki) -> None:
    with pytest.raises(CallerError, match="PCR0 of 32 bytes"):
        SimulatedNsm(pki, {0: bytes(32)})


def test_dev_pki_root_certificate_path_holds_the_pinned_root(tmp_path: Path) -> None:
    pki = DevPki.load_or_create(tmp_path)

    pem = DevPki.root_certificate_path(tmp_path).read_bytes()

    assert pem == pki.root_certificate.public_bytes(Encoding.PEM)
