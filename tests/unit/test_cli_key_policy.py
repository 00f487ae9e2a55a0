import json

from click.testing import CliRunner

from obscura_cli.main import main

PCR0 = "AB" * 48


def test_key_policy_vendor_prints_policy_with_lowercased_pcr0() -> None:
    result = CliRunner().invoke(main, ["key-policy", "vendor", "--pcr0", PCR0])
    assert result.exit_code == 0, result.output
    policy = json.loads(result.output)
    release = policy["Statement"][2]
    assert release["Condition"]["StringEqualsIgnoreCase"] == {
        "kms:RecipientAttestation:ImageSha384": PCR0.lower()
    }
    assert release["Principal"]["AWS"].endswith(":role/obscura-enclave")


def test_key_policy_hospital_reads_pcrs_file(tmp_path) -> None:
    pcrs = tmp_path / "pcrs.json"
    pcrs.write_text(json.dumps({"PCR0": "aa" * 48, "PCR1": "bb" * 48}))
    result = CliRunner().invoke(
        main,
        [
            "key-policy",
            "hospital",
            "--pcrs",
            str(pcrs),
            "--results-arn",
            "arn:aws:iam::123456789012:role/reader",
        ],
    )
    assert result.exit_code == 0, result.output
    policy = json.loads(result.output)
    sids = [s["Sid"] for s in policy["Statement"]]
    assert "ResultsDecryptsPredictions" in sids
    results = policy["Statement"][sids.index("ResultsDecryptsPredictions")]
    assert results["Principal"]["AWS"] == "arn:aws:iam::123456789012:role/reader"
    unwrap = policy["Statement"][sids.index("AttestedEnclaveUnwrapsImageKeys")]
    assert (
        unwrap["Condition"]["StringEqualsIgnoreCase"]["kms:RecipientAttestation:PCR1"]
        == "bb" * 48
    )


def test_key_policy_without_pcr0_exits_2_with_message() -> None:
    result = CliRunner().invoke(main, ["key-policy", "vendor"])
    assert result.exit_code == 2
    assert "give the approved PCR0" in result.output


def test_key_policy_with_zero_pcr0_is_refused() -> None:
    result = CliRunner().invoke(main, ["key-policy", "vendor", "--pcr0", "0" * 96])
    assert result.exit_code == 2
    assert "all zeros" in result.output
