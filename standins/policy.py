"""Key-policy evaluation for the KMS stand-in, for the subset Obscura's policies use.

A policy is ``{"Version": "2012-10-17", "Statement": [...]}``. Each statement has
``Effect`` (Allow or Deny), ``Principal`` (``"*"`` or ``{"AWS": arn | [arns]}``),
``Action`` and ``Resource`` (strings or lists, ``*`` and ``?`` wildcards) and an
optional ``Condition`` using ``StringEquals`` or ``StringEqualsIgnoreCase``. Within
one operator block the condition keys are ANDed and a key's values are ORed; a key
absent from the request does not match. An explicit Deny wins, then any Allow, else
the request is implicitly denied.

Anything else fails closed: an unsupported operator, ``NotAction``,
``NotPrincipal`` or ``NotResource`` in a statement that applies to the request
denies it, naming what was not understood.

The stand-in models no IAM identity policies and no grants. Principals match by
exact ARN, so an account root ARN (or bare account id) in a policy matches only
that account's root, not every role of the account as AWS would once an IAM policy
delegates: add the role's ARN to the key policy instead.

Condition key names are case-insensitive, as in IAM. That includes the context-key
part of ``kms:EncryptionContext:<key>``; KMS documents that a fully case-sensitive
match on the encryption context needs ``kms:EncryptionContextKeys`` as well, which
the stand-in does not support. Values compare case-sensitively under
``StringEquals`` and case-insensitively under ``StringEqualsIgnoreCase``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from shared.errors import CallerError

SUPPORTED_VERSIONS = ("2012-10-17", "2008-10-17")
SUPPORTED_OPERATORS = ("stringequals", "stringequalsignorecase")
_UNSUPPORTED_ELEMENTS = ("NotAction", "NotPrincipal", "NotResource")
_ACCOUNT_ID = re.compile(r"^\d{12}$")


class PolicyError(CallerError):
    """A key policy the stand-in cannot read; evaluation then denies."""


@dataclass(frozen=True)
class RequestContext:
    """What a request asks for: who, which action, on which key, with which keys.

    ``condition_values`` maps lowercased condition key names to the request's
    values. A name maps to several values only when the encryption context holds
    keys that differ by case alone.
    """

    principal_arn: str
    action: str
    resource_arn: str
    condition_values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        principal_arn: str,
        action: str,
        resource_arn: str,
        *,
        encryption_context: Mapping[str, str] | None = None,
        attestation_pcrs: Mapping[int, str] | None = None,
    ) -> RequestContext:
        """Derive the KMS condition keys from a request's context and PCRs."""
        values: dict[str, tuple[str, ...]] = {}
        for key, value in (encryption_context or {}).items():
            name = f"kms:encryptioncontext:{key}".lower()
            values[name] = (*values.get(name, ()), value)
        if attestation_pcrs is not None:
            for index, digest in attestation_pcrs.items():
                values[f"kms:recipientattestation:pcr{index}"] = (digest.lower(),)
            if 0 in attestation_pcrs:
                image = attestation_pcrs[0].lower()
                values["kms:recipientattestation:imagesha384"] = (image,)
        return cls(principal_arn, action, resource_arn, values)


@dataclass(frozen=True)
class Decision:
    """The outcome: allowed or not, the deciding statement's Sid, and why."""

    allowed: bool
    statement_sid: str | None
    reason: str

    def denial_message(self, context: RequestContext) -> str:
        """The AccessDeniedException text, naming principal, action and key."""
        return (
            f"User: {context.principal_arn} is not authorized to perform:"
            f" {context.action} on resource: {context.resource_arn}"
            f" because {self.reason}."
        )


def parse_policy(text: str) -> dict[str, Any]:
    """Parse a key policy document as GetKeyPolicy returns it."""
    try:
        policy = json.loads(text)
    except ValueError as exc:
        raise PolicyError(
            f"The key policy is not JSON ({exc}); put a valid policy on the key."
        ) from exc
    if not isinstance(policy, dict):
        raise PolicyError("The key policy is not a JSON object; put a valid policy.")
    return policy


def evaluate(policy: Mapping[str, Any], context: RequestContext) -> Decision:
    """Decide a request against one key policy; malformed input denies."""
    try:
        return _evaluate(policy, context)
    except PolicyError as exc:
        return Decision(False, None, f"the key policy cannot be evaluated: {exc}")


def _evaluate(policy: Mapping[str, Any], context: RequestContext) -> Decision:
    version = policy.get("Version")
    if version not in SUPPORTED_VERSIONS:
        raise PolicyError(f"Version {version!r} is not one of {SUPPORTED_VERSIONS}")
    allow: str | None = None
    for index, statement in enumerate(_statements(policy)):
        sid = str(statement.get("Sid", f"#{index}"))
        if not _applies(statement, context):
            continue
        unsupported = _unsupported_operator(statement)
        if unsupported is not None:
            return Decision(
                False,
                sid,
                f"statement {sid} uses condition operator {unsupported},"
                " which the stand-in does not support",
            )
        effect = _effect(statement)
        if effect == "Deny" and _conditions_match(statement, context, strict=False):
            return Decision(False, sid, f"statement {sid} explicitly denies it")
        if (
            effect == "Allow"
            and allow is None
            and _conditions_match(statement, context)
        ):
            allow = sid
    if allow is not None:
        return Decision(True, allow, f"statement {allow} allows it")
    return Decision(
        False, None, f"no key policy statement allows the {context.action} action"
    )


def _statements(policy: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    raw = policy.get("Statement")
    statements = [raw] if isinstance(raw, dict) else raw
    if not isinstance(statements, list) or not all(
        isinstance(s, dict) for s in statements
    ):
        raise PolicyError("Statement must be an object or a list of objects")
    return statements


def _effect(statement: Mapping[str, Any]) -> str:
    effect = statement.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise PolicyError(f"Effect {effect!r} is neither Allow nor Deny")
    return str(effect)


def _applies(statement: Mapping[str, Any], context: RequestContext) -> bool:
    for element in _UNSUPPORTED_ELEMENTS:
        if element in statement:
            raise PolicyError(f"element {element} is not supported by the stand-in")
    return (
        _principal_matches(statement.get("Principal"), context.principal_arn)
        and _any_glob(statement.get("Action"), context.action, ignore_case=True)
        and _any_glob(statement.get("Resource"), context.resource_arn)
    )


def _principal_matches(principal: Any, arn: str) -> bool:
    if principal == "*":
        return True
    if not isinstance(principal, dict):
        raise PolicyError(f"Principal {principal!r} is neither '*' nor an object")
    if "AWS" not in principal:
        # Service principals never sign requests through the stand-in.
        return False
    return any(
        _principal_is(candidate, arn) for candidate in _strings(principal["AWS"])
    )


def _principal_is(candidate: str, arn: str) -> bool:
    if candidate == "*":
        return True
    if _ACCOUNT_ID.match(candidate):
        candidate = f"arn:aws:iam::{candidate}:root"
    return candidate == arn


def _any_glob(patterns: Any, value: str, *, ignore_case: bool = False) -> bool:
    if patterns is None:
        raise PolicyError("a statement lacks Action or Resource")
    return any(
        _glob(pattern, ignore_case).fullmatch(value) for pattern in _strings(patterns)
    )


@lru_cache(maxsize=512)
def _glob(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    regex = "".join(
        ".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern
    )
    return re.compile(regex, re.IGNORECASE if ignore_case else 0)


def _strings(value: Any) -> list[str]:
    values = value if isinstance(value, list) else [value]
    out: list[str] = []
    for item in values:
        if isinstance(item, bool):
            out.append("true" if item else "false")
        elif isinstance(item, str | int | float):
            out.append(str(item))
        else:
            raise PolicyError(f"value {item!r} is not a string or a list of strings")
    return out


def _condition_blocks(statement: Mapping[str, Any]) -> Mapping[str, Any]:
    conditions = statement.get("Condition", {})
    if not isinstance(conditions, dict):
        raise PolicyError("Condition must be an object of operator blocks")
    return conditions


def _unsupported_operator(statement: Mapping[str, Any]) -> str | None:
    for operator in _condition_blocks(statement):
        if operator.lower() not in SUPPORTED_OPERATORS:
            return str(operator)
    return None


def _conditions_match(
    statement: Mapping[str, Any], context: RequestContext, *, strict: bool = True
) -> bool:
    """AND over operator blocks and keys, OR over a key's policy values.

    When the request holds several values for one key (context keys differing by
    case), an Allow needs every one of them to match and a Deny needs any one:
    both readings err towards denial.
    """
    for operator, block in _condition_blocks(statement).items():
        if not isinstance(block, dict):
            raise PolicyError(f"condition block {operator} is not an object")
        fold = operator.lower() == "stringequalsignorecase"
        for key, expected in block.items():
            actual = context.condition_values.get(key.lower())
            if not actual:
                return False
            wanted = {_folded(v, fold) for v in _strings(expected)}
            hits = [_folded(v, fold) in wanted for v in actual]
            if not (all(hits) if strict else any(hits)):
                return False
    return True


def _folded(value: str, fold: bool) -> str:
    return value.casefold() if fold else value
