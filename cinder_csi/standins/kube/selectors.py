"""Label and field selectors: the query-string forms, LabelSelector objects and node selectors.

Parsing is strict like the real server's: a malformed selector is a 400 rather than a silently
broader match, because a lax selector would hide watch-loop bugs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cinder_csi.standins.kube.errors import bad_request
from cinder_csi.standins.kube.resources import ResourceType

_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_TOKEN = re.compile(r"\s*(!=|==|=|!|\(|\)|,|[^\s!=(),]+)")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # in, notin, exists, !, =, !=, gt, lt
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        if not present or value is None:
            return False
        try:
            number = int(value)
        except ValueError:
            return False
        bound = int(self.values[0])
        return number > bound if self.op == "gt" else number < bound


LabelSelector = tuple[Requirement, ...]


def _check_key(key: str) -> None:
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _PREFIX.match(prefix)):
        raise ValueError(f'invalid label key "{key}": prefix part must be a DNS-1123 subdomain')
    if not name or len(name) > 63 or not _NAME.match(name):
        raise ValueError(
            f'invalid label key "{key}": name part must consist of alphanumeric characters, '
            "'-', '_' or '.', and must start and end with an alphanumeric character"
        )


def _check_value(value: str) -> None:
    if value and (len(value) > 63 or not _NAME.match(value)):
        raise ValueError(
            f'invalid label value: "{value}": a valid label must be an empty string or consist '
            "of alphanumeric characters, '-', '_' or '.', and must start and end with an "
            "alphanumeric character"
        )


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse ``labelSelector``; raises ApiError 400 for malformed input."""
    if not text or not text.strip():
        return ()
    try:
        return _parse_labels(text)
    except ValueError as exc:
        raise bad_request(f"unable to parse requirement: {exc}") from exc


def _parse_labels(text: str) -> LabelSelector:
    tokens = [m.group(1) for m in _TOKEN.finditer(text) if m.group(1)]
    if "".join(tokens) != re.sub(r"\s+", "", text):
        raise ValueError(f"found unexpected characters in {text!r}")
    reqs: list[Requirement] = []
    pos = 0

    def take() -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError(f"unexpected end of selector {text!r}")
        pos += 1
        return tokens[pos - 1]

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    while pos < len(tokens):
        tok = take()
        if tok == "!":
            key = take()
            _check_key(key)
            reqs.append(Requirement(key, "!"))
        else:
            key = tok
            _check_key(key)
            nxt = peek()
            if nxt is None or nxt == ",":
                reqs.append(Requirement(key, "exists"))
            elif nxt in ("=", "==", "!="):
                take()
                value = peek()
                if value is None or value == ",":
                    value = ""
                else:
                    take()
                _check_value(value)
                reqs.append(Requirement(key, "!=" if nxt == "!=" else "=", (value,)))
            elif nxt in ("in", "notin"):
                take()
                if take() != "(":
                    raise ValueError(f"found '{tokens[pos - 1]}', expected: '('")
                values: list[str] = []
                while True:
                    item = take()
                    if item == ")":
                        break
                    if item == ",":
                        continue
                    _check_value(item)
                    values.append(item)
                reqs.append(Requirement(key, nxt, tuple(sorted(set(values)))))
            elif nxt in ("gt", "lt") or (nxt is not None and nxt[:1] in "<>"):
                raise ValueError(f"unsupported operator {nxt!r} in {text!r}")
            else:
                raise ValueError(f"found '{nxt}', expected: '=', '!=', '==', 'in', notin'")
        sep = peek()
        if sep is not None:
            if sep != ",":
                raise ValueError(f"found '{sep}', expected: ',' or 'end of string'")
            take()
            if peek() is None:
                raise ValueError("found 'end of string', expected: identifier")
    return tuple(reqs)


def labels_match(selector: LabelSelector, labels: Mapping[str, str] | None) -> bool:
    have = labels or {}
    return all(req.matches(have) for req in selector)


def match_label_selector_object(
    selector: Mapping[str, Any] | None, labels: Mapping[str, str]
) -> bool:
    """A metav1.LabelSelector (matchLabels + matchExpressions); an empty one matches everything."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        op = str(expr.get("operator", ""))
        values = tuple(str(v) for v in expr.get("values") or [])
        req = Requirement(str(expr.get("key", "")), _EXPRESSION_OPS.get(op, op), values)
        if not req.matches(labels):
            return False
    return True


_EXPRESSION_OPS = {
    "In": "in",
    "NotIn": "notin",
    "Exists": "exists",
    "DoesNotExist": "!",
    "Gt": "gt",
    "Lt": "lt",
}


def node_selector_terms_match(terms: list[dict[str, Any]], node: Mapping[str, Any]) -> bool:
    """Required nodeSelectorTerms: the terms are ORed, the expressions in one term ANDed."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    fields = {"metadata.name": (node.get("metadata") or {}).get("name", "")}
    for term in terms:
        exprs = term.get("matchExpressions") or []
        field_exprs = term.get("matchFields") or []
        if not exprs and not field_exprs:
            continue  # an empty term matches nothing, as in the real scheduler
        ok = all(_node_expr(e, labels) for e in exprs) and all(
            _node_expr(e, fields) for e in field_exprs
        )
        if ok:
            return True
    return False


def _node_expr(expr: Mapping[str, Any], values: Mapping[str, str]) -> bool:
    op = str(expr.get("operator", ""))
    if op not in _EXPRESSION_OPS:
        return False
    req = Requirement(
        str(expr.get("key", "")),
        _EXPRESSION_OPS[op],
        tuple(str(v) for v in expr.get("values") or []),
    )
    return req.matches(values)


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    value: str
    negate: bool


FieldSelector = tuple[FieldRequirement, ...]


def parse_field_selector(text: str | None, rt: ResourceType) -> FieldSelector:
    """Parse ``fieldSelector``; only the fields the real server indexes for ``rt`` are allowed."""
    if not text or not text.strip():
        return ()
    reqs: list[FieldRequirement] = []
    for part in _split_unescaped(text, ","):
        if not part:
            raise bad_request(f"invalid selector: '{text}'; can't understand ''")
        reqs.append(_parse_field_term(part, text))
    allowed = {"metadata.name", "metadata.namespace", *rt.fields}
    for req in reqs:
        if req.field not in allowed:
            raise bad_request(f"field label not supported: {req.field}")
    return tuple(reqs)


def _parse_field_term(part: str, whole: str) -> FieldRequirement:
    for op in ("!=", "==", "="):
        idx = _find_unescaped(part, op)
        if idx >= 0:
            field = part[:idx].strip()
            value = _unescape(part[idx + len(op) :])
            return FieldRequirement(field, value, op == "!=")
    raise bad_request(f"invalid selector: '{whole}'; can't understand '{part}'")


def _find_unescaped(text: str, needle: str) -> int:
    i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text.startswith(needle, i):
            return i
        i += 1
    return -1


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def field_value(obj: Mapping[str, Any], field: str) -> str:
    """The string value a field selector compares against; a missing field is ""."""
    if field == "source":
        field = "source.component"
    node: Any = obj
    for part in field.split("."):
        if not isinstance(node, Mapping):
            return ""
        node = node.get(part)
    if node is None:
        return ""
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


def fields_match(selector: FieldSelector, obj: Mapping[str, Any]) -> bool:
    for req in selector:
        equal = field_value(obj, req.field) == req.value
        if equal == req.negate:
            return False
    return True


Matcher = Callable[[Mapping[str, Any]], bool]


def matcher(labels: LabelSelector, fields: FieldSelector) -> Matcher:
    def match(obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        return labels_match(labels, meta.get("labels")) and fields_match(fields, obj)

    return match
