"""Key-policy evaluation: effects, matching, conditions, failing closed."""

from __future__ import annotations

from typing import Any

import pytest

from standins.policy import (
    Decision,
    PolicyError,
    RequestContext,
    evaluate,
    parse_policy,
)

ENCLAVE = "arn:aws:iam::111122223333:role/obscura-enclave"
RESULTS = "arn:aws:iam::111122223333:role/obscura-results"
KEY = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
PCR0 = "ab" * 48


def _statement(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "Sid": "S",
        "Effect": "Allow",
        "Principal": {"AWS": ENCLAVE},
        "Action": "kms:Decrypt",
        "Resource": "*",
    }
    return {**base, **fields}


def _policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def _decide(
    policy: dict[str, Any],
    *,
    principal: str = ENCLAVE,
    action: str = "kms:Decrypt",
    context: dict[str, str] | None = None,
    pcrs: dict[int, str] | None = None,
) -> Decision:
    request = RequestContext.build(
        principal, action, KEY, encryption_context=context, attestation_pcrs=pcrs
    )
    return evaluate(policy, request)


def test_policy_allow_names_matching_statement() -> None:
    decision = _decide(_policy(_statement(Sid="EnclaveDecrypts")))

    assert decision.allowed
    assert decision.statement_sid == "EnclaveDecrypts"


def test_policy_explicit_deny_wins_over_earlier_allow() -> None:
    policy = _policy(_statement(Sid="Allow"), _statement(Sid="NoWay", Effect="Deny"))

    decision = _decide(policy)

    assert not decision.allowed
    assert decision.statement_sid == "NoWay"


def test_policy_without_matching_statement_denies_implicitly() -> None:
    decision = _decide(_policy(_statement(Action="kms:Encrypt")))

    assert not decision.allowed
    assert decision.statement_sid is None
    assert "no key policy statement allows the kms:Decrypt action" in decision.reason


@pytest.mark.parametrize(
    ("pattern", "action", "allowed"),
    [
        ("kms:*", "kms:Decrypt", True),
        ("kms:GenerateDataKey*", "kms:GenerateDataKeyWithoutPlaintext", True),
        ("kms:GenerateDataKey*", "kms:Decrypt", False),
        ("KMS:decrypt", "kms:Decrypt", True),
        ("kms:Re*", "kms:ReEncryptFrom", True),
        ("kms:Decrypt?", "kms:Decrypt", False),
    ],
)
def test_policy_action_wildcards(pattern: str, action: str, allowed: bool) -> None:
    decision = _decide(_policy(_statement(Action=[pattern])), action=action)

    assert decision.allowed is allowed


def test_policy_principal_list_matches_any_member() -> None:
    policy = _policy(_statement(Principal={"AWS": [RESULTS, ENCLAVE]}))

    assert _decide(policy).allowed
    assert not _decide(policy, principal=ENCLAVE.replace("enclave", "x")).allowed


def test_policy_star_principal_matches_everyone() -> None:
    assert _decide(_policy(_statement(Principal="*")), principal=RESULTS).allowed


def test_policy_account_root_does_not_stand_for_its_roles() -> None:
    policy = _policy(_statement(Principal={"AWS": "111122223333"}))

    assert not _decide(policy).allowed
    assert _decide(policy, principal="arn:aws:iam::111122223333:root").allowed


def test_policy_resource_must_name_the_key() -> None:
    assert _decide(_policy(_statement(Resource=KEY))).allowed
    assert not _decide(_policy(_statement(Resource=KEY[:-1] + "0"))).allowed


def test_policy_string_equals_is_case_sensitive_on_values() -> None:
    condition = {"StringEquals": {"kms:RecipientAttestation:ImageSha384": PCR0}}
    policy = _policy(_statement(Condition=condition))

    assert _decide(policy, pcrs={0: PCR0}).allowed
    assert not _decide(
        _policy(_statement(Condition=_upper(condition))), pcrs={0: PCR0}
    ).allowed


def _upper(condition: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    return {
        op: {k: v.upper() for k, v in block.items()} for op, block in condition.items()
    }


def test_policy_string_equals_ignore_case_folds_values() -> None:
    condition = {
        "StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": PCR0.upper()}
    }

    assert _decide(_policy(_statement(Condition=condition)), pcrs={0: PCR0}).allowed


def test_policy_condition_key_names_are_case_insensitive() -> None:
    condition = {"StringEquals": {"KMS:ENCRYPTIONCONTEXT:PURPOSE": "result"}}

    decision = _decide(
        _policy(_statement(Condition=condition)), context={"Purpose": "result"}
    )

    assert decision.allowed


def test_policy_missing_condition_key_does_not_match() -> None:
    condition = {"StringEquals": {"kms:RecipientAttestation:ImageSha384": PCR0}}
    policy = _policy(_statement(Condition=condition))

    assert not _decide(policy).allowed
    assert not _decide(policy, context={"purpose": "image"}).allowed


def test_policy_missing_condition_key_does_not_trigger_deny() -> None:
    deny = _statement(
        Sid="DenyImages",
        Effect="Deny",
        Condition={"StringEquals": {"kms:EncryptionContext:purpose": "image"}},
    )

    assert _decide(_policy(_statement(), deny)).allowed
    assert not _decide(
        _policy(_statement(), deny), context={"purpose": "image"}
    ).allowed


def test_policy_condition_keys_are_anded_and_values_ored() -> None:
    condition = {
        "StringEquals": {
            "kms:EncryptionContext:purpose": ["image", "result"],
            "kms:RecipientAttestation:ImageSha384": PCR0,
        }
    }
    policy = _policy(_statement(Condition=condition))

    assert _decide(policy, context={"purpose": "result"}, pcrs={0: PCR0}).allowed
    assert not _decide(policy, context={"purpose": "result"}).allowed
    assert not _decide(policy, context={"purpose": "model"}, pcrs={0: PCR0}).allowed


def test_policy_operator_blocks_are_anded() -> None:
    condition = {
        "StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": PCR0},
        "StringEquals": {"kms:EncryptionContext:purpose": "image"},
    }
    policy = _policy(_statement(Condition=condition))

    assert _decide(policy, context={"purpose": "image"}, pcrs={0: PCR0}).allowed
    assert not _decide(
        policy, context={"purpose": "image"}, pcrs={0: "00" * 48}
    ).allowed


def test_policy_encryption_context_purpose_result_allowed_image_denied() -> None:
    condition = {"StringEquals": {"kms:EncryptionContext:purpose": "result"}}
    policy = _policy(_statement(Principal={"AWS": RESULTS}, Condition=condition))

    assert _decide(policy, principal=RESULTS, context={"purpose": "result"}).allowed
    assert not _decide(policy, principal=RESULTS, context={"purpose": "image"}).allowed


def test_policy_context_keys_differing_by_case_must_all_match_an_allow() -> None:
    condition = {"StringEquals": {"kms:EncryptionContext:purpose": "result"}}
    policy = _policy(_statement(Condition=condition))

    decision = _decide(policy, context={"purpose": "result", "PURPOSE": "image"})

    assert not decision.allowed


@pytest.mark.parametrize(
    "operator", ["StringLike", "ForAnyValue:StringEquals", "Null", "Bool"]
)
def test_policy_unsupported_operator_fails_closed(operator: str) -> None:
    condition = {operator: {"kms:EncryptionContext:purpose": "result"}}
    policy = _policy(
        _statement(Sid="Odd", Condition=condition), _statement(Sid="Plain")
    )

    decision = _decide(policy, context={"purpose": "result"})

    assert not decision.allowed
    assert operator in decision.reason


def test_policy_unsupported_operator_elsewhere_is_ignored() -> None:
    other = _statement(Principal={"AWS": RESULTS}, Condition={"StringLike": {"a": "b"}})

    assert _decide(_policy(other, _statement())).allowed


def test_policy_not_action_fails_closed() -> None:
    statement = _statement()
    statement["NotAction"] = "kms:Encrypt"

    decision = _decide(_policy(statement))

    assert not decision.allowed
    assert "NotAction" in decision.reason


def test_policy_unknown_version_fails_closed() -> None:
    policy = {"Version": "2020-01-01", "Statement": [_statement()]}

    assert not _decide(policy).allowed


def test_policy_single_statement_object_is_accepted() -> None:
    assert _decide({"Version": "2012-10-17", "Statement": _statement()}).allowed


def test_policy_denial_message_names_principal_action_and_key() -> None:
    request = RequestContext.build(ENCLAVE, "kms:Decrypt", KEY)
    decision = evaluate(_policy(), request)

    message = decision.denial_message(request)

    assert message == (
        f"User: {ENCLAVE} is not authorized to perform: kms:Decrypt on resource:"
        f" {KEY} because no key policy statement allows the kms:Decrypt action."
    )


def test_policy_parse_rejects_non_json() -> None:
    with pytest.raises(PolicyError, match="not JSON"):
        parse_policy("{not json")


def test_policy_context_exposes_pcr0_under_both_names() -> None:
    request = RequestContext.build(
        ENCLAVE, "kms:Decrypt", KEY, attestation_pcrs={0: PCR0.upper()}
    )

    assert request.condition_values["kms:recipientattestation:imagesha384"] == (PCR0,)
    assert request.condition_values["kms:recipientattestation:pcr0"] == (PCR0,)
