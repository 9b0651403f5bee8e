"""Decentralized JWT authorization for natsreg's roles: an operator, accounts, creds files.

:func:`render_jwt` makes a fresh trust chain (nats-server's "operator mode"): an operator, a
system account, and one account ``natsreg`` whose users are natsreg's roles, each with the
permissions :func:`natsreg.permissions.permissions` gives it. It writes a nats-server config
that trusts the operator and preloads the account JWTs (``resolver: MEMORY``), and one
``<user>.creds`` file per role for ``--creds`` / nats-py ``user_credentials=``.

Permission templates. nats-server lets an account hold *scoped signing keys*: a user signed
by one gets the key's permission template, with ``{{name()}}`` replaced by the user JWT's
``name`` and ``{{tag(K)}}`` by the values of its ``K:value`` tags (one subject per value). A
role is issued through such a key when its template says exactly what its own permissions say:
the user is named after the role's user, so ``_INBOX_{{name()}}.>`` is its inbox, and a caller
carries one ``calls:<service>`` tag per service it calls. Each distinct template gets one key.

What no template can express is written into the user JWT itself (a "per-user" role):

- a queue-group rule (``subscribe "<service>.> <service>"``, the registry's query group):
  nats-server checks each templated entry as a plain subject, so an entry with a queue group
  is dropped from any list that holds a template. ``service`` and ``registry`` roles are
  therefore per-user.
- a name NATS tools would change: tags are lower case in NATS (nats-io/jwt ``TagList``), so a
  caller of a service whose name has capitals is per-user.
- a list that would expand past :data:`TEMPLATE_EXPANSION_LIMIT` subjects (a caller of more
  than about 1,300 services).

A client sends its user JWT in its CONNECT line, which nats-server bounds (``max_control_line``,
4 KB by default); a per-user JWT of a role that calls many services is longer, so the config
raises that limit to fit the longest user JWT it issued (:data:`CONNECT_HEADROOM`).

:attr:`JwtSetup.templated` says which users got a template. Every run makes new keys: all
creds files must be handed out again, and the old ones stop working with the new config.
The operator and account seeds are not kept; the system account's user (``sys.creds``) is
what a registry's ``--system-creds`` and NATS' own tools need for server events.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys

from .errors import ConfigError
from .permissions import ALL_SERVICES, Permissions, Role, inbox_prefix, permissions

__all__ = ["CONFIG_FILE", "SYSTEM_CREDS", "JwtSetup", "render_jwt"]

#: The nats-server config :func:`render_jwt` writes, inside its output folder.
CONFIG_FILE = "nats-jwt.conf"
#: The creds file of the system account's user, inside the output folder.
SYSTEM_CREDS = "sys.creds"
#: Name of the operator, and of the account that holds every natsreg role.
OPERATOR_NAME = "natsreg"
ACCOUNT_NAME = "natsreg"
SYSTEM_ACCOUNT_NAME = "SYS"
_SYSTEM_USER = SYSTEM_CREDS.removesuffix(".creds")

# nats-io/jwt's "no limit" (-1); a limit left out of a JWT is 0, which nats-server takes as
# "none allowed" (an account with conn 0 takes no connection).
_NO_LIMIT = -1
# A user's own limits: none beyond the account's and the server's.
_UNLIMITED = {"subs": _NO_LIMIT, "data": _NO_LIMIT, "payload": _NO_LIMIT}
_JWT_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
# What the user's template stands for while a template is derived: strings no real user,
# service or prefix holds (checked: a template must expand back to the real permissions).
_USER_MARK = "NATSREGxUSERx"
_SERVICE_MARK = "NATSREGxSERVICEx"
_CALLS_MARK = "NATSREGxCALLSx"
#: nats-server's cap on the subjects one template list may expand to for one user
#: (``maxPermTemplateSubjectExpansions``): past it the user is refused, so such a role is
#: issued per-user instead.
TEMPLATE_EXPANSION_LIMIT = 4096
#: nats-server's default ``max_control_line``. A client sends its user JWT in its CONNECT line,
#: so a JWT longer than that line is refused ("maximum control line exceeded"): the config
#: raises the limit to fit the largest user JWT, with ``CONNECT_HEADROOM`` to spare.
DEFAULT_MAX_CONTROL_LINE = 4096
#: Bytes of a CONNECT line besides the user JWT: its signature, client name, version, flags.
CONNECT_HEADROOM = 1024
_NAME_OP = "{{name()}}"
_SERVICE_OP = "{{tag(service)}}"
_CALLS_OP = "{{tag(calls)}}"
_TEMPLATE = re.compile(r"\{\{[^}]+\}\}")


@dataclass(frozen=True)
class JwtSetup:
    """What :func:`render_jwt` wrote."""

    #: The nats-server config: ``nats-server -c <config>``.
    config: Path
    #: One creds file per role, by user name.
    creds: Mapping[str, Path]
    #: The system account's user, for server events (``natsreg registry --system-creds``).
    system_creds: Path
    #: The operator's and the natsreg account's public keys.
    operator: str
    account: str
    #: Users whose permissions come from a scoped signing key's template (the others carry
    #: their permissions in their own JWT).
    templated: frozenset[str]


def render_jwt(roles: Sequence[Role], prefix: str, out_dir: Path) -> JwtSetup:
    """Write an operator-mode nats-server config and one creds file per role into
    ``out_dir``, confining each role to :func:`natsreg.permissions.permissions` on control
    prefix ``prefix``. Creds files are secrets, written with mode 0600."""
    users = [role.user for role in roles]
    duplicate = next((user for user in users if users.count(user) > 1), None)
    if duplicate is not None:
        raise ConfigError(f"user {duplicate!r} is given two roles: give each role its own user")
    if _SYSTEM_USER in users:
        raise ConfigError(
            f"user {_SYSTEM_USER!r} is the system account's ({SYSTEM_CREDS}): "
            "name the role's user otherwise"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    operator, account, system = (
        _new_key(nkeys.PREFIX_BYTE_OPERATOR),
        _new_key(nkeys.PREFIX_BYTE_ACCOUNT),
        _new_key(nkeys.PREFIX_BYTE_ACCOUNT),
    )
    scopes: dict[str, tuple[nkeys.KeyPair, dict[str, Any], str]] = {}
    issued: list[tuple[Role, str, nkeys.KeyPair]] = []
    templated = set()
    for role in roles:
        user_key = _new_key(nkeys.PREFIX_BYTE_USER)
        perms = permissions(role, prefix, users=users)
        template = _template(role, prefix, users, perms)
        if template is None:
            claims = _user_claims(role.user, user_key, _limits(perms), tags=())
            issued.append((role, _encode(claims, account), user_key))
            continue
        fingerprint = json.dumps(template, sort_keys=True)
        if fingerprint not in scopes:
            scopes[fingerprint] = (_new_key(nkeys.PREFIX_BYTE_ACCOUNT), template, role.kind)
        signer = scopes[fingerprint][0]
        claims = _user_claims(role.user, user_key, None, tags=_tags(role))
        claims["nats"]["issuer_account"] = _public(account)
        issued.append((role, _encode(claims, signer), user_key))
        templated.add(role.user)

    signing_keys = [
        {
            "kind": "user_scope",
            "key": _public(key),
            "role": kind,
            "template": template,
            "description": f"natsreg {kind} role: permissions from the user's name and tags",
        }
        for key, template, kind in scopes.values()
    ]
    account_jwt = _encode(_account_claims(account, ACCOUNT_NAME, signing_keys), operator)
    system_jwt = _encode(_account_claims(system, SYSTEM_ACCOUNT_NAME, []), operator)
    operator_jwt = _encode(
        _claims(
            operator,
            OPERATOR_NAME,
            {"type": "operator", "version": 2, "system_account": _public(system)},
        ),
        operator,
    )

    creds = {}
    for role, user_jwt, user_key in issued:
        creds[role.user] = _write_secret(out_dir / f"{role.user}.creds", _creds(user_jwt, user_key))
    sys_user = _new_key(nkeys.PREFIX_BYTE_USER)
    sys_jwt = _encode(_user_claims(_SYSTEM_USER, sys_user, dict(_UNLIMITED), tags=()), system)
    system_creds = _write_secret(out_dir / SYSTEM_CREDS, _creds(sys_jwt, sys_user))
    config = out_dir / CONFIG_FILE
    longest = max((len(user_jwt) for _, user_jwt, _ in issued), default=0)
    config.write_text(
        _server_config(
            operator_jwt,
            _public(system),
            {_public(account): account_jwt, _public(system): system_jwt},
            max(DEFAULT_MAX_CONTROL_LINE, longest + CONNECT_HEADROOM),
        )
    )
    return JwtSetup(
        config=config,
        creds=creds,
        system_creds=system_creds,
        operator=_public(operator),
        account=_public(account),
        templated=frozenset(templated),
    )


def _template(
    role: Role, prefix: str, users: Sequence[str], perms: Permissions
) -> dict[str, Any] | None:
    """The scoped signing key template that gives ``role`` exactly ``perms``, or None when no
    template can (see the module docstring)."""
    if any(tag != tag.lower() for tag in _tags(role)):
        return None
    shape = Role(
        kind=role.kind,
        user=_USER_MARK,
        name=_SERVICE_MARK if role.kind == "service" else "",
        calls=tuple(
            dict.fromkeys(
                ALL_SERVICES if callee == ALL_SERVICES else _CALLS_MARK for callee in role.calls
            )
        ),
    )
    marked = _limits(permissions(shape, prefix, users=users))

    def unmark(entries: list[str]) -> list[str]:
        return [
            entry.replace(_USER_MARK, _NAME_OP)
            .replace(_SERVICE_MARK, _SERVICE_OP)
            .replace(_CALLS_MARK, _CALLS_OP)
            for entry in entries
        ]

    for side in ("pub", "sub"):
        for verb, entries in marked[side].items():
            marked[side][verb] = unmark(entries)
    values = {
        _NAME_OP: [role.user],
        _SERVICE_OP: [role.name],
        _CALLS_OP: [c for c in role.calls if c != ALL_SERVICES],
    }
    expected = _limits(perms)
    # A caller of every service is denied publishing into each other user's inbox by name;
    # the template, shared by several users, denies every user's, its own included, which
    # takes nothing it needs (a client never publishes into its own inbox).
    own_inbox = f"{inbox_prefix(role.user)}.>"
    for side in ("pub", "sub"):
        for verb in ("allow", "deny"):
            expanded = _expand(marked[side].get(verb, []), values)
            if len(expanded) > TEMPLATE_EXPANSION_LIMIT:
                return None
            got = set(expanded)
            want = set(expected[side].get(verb, []))
            if side == "pub" and verb == "deny":
                got.discard(own_inbox)
            if got != want:
                return None
    if marked.get("resp") != expected.get("resp"):
        return None
    return marked


def _expand(entries: list[str], values: Mapping[str, list[str]]) -> list[str]:
    """What nats-server makes of a template list for one user (``processUserPermissionsTemplate``
    in its auth.go): one subject per combination of tag values, and, once a list holds a
    template, every entry that is no plain subject dropped, queue-group entries included."""
    if not any(_TEMPLATE.search(entry) for entry in entries):
        return list(entries)
    out = []
    for entry in entries:
        ops = list(dict.fromkeys(_TEMPLATE.findall(entry)))
        if any(op not in values for op in ops):
            return []
        for combination in itertools.product(*(values[op] for op in ops)):
            subject = entry
            for op, value in zip(ops, combination, strict=True):
                subject = subject.replace(op, value)
            if " " not in subject:
                out.append(subject)
    return out


def _tags(role: Role) -> list[str]:
    tags = [f"service:{role.name}"] if role.kind == "service" else []
    return tags + [f"calls:{callee}" for callee in role.calls if callee != ALL_SERVICES]


def _limits(perms: Permissions) -> dict[str, Any]:
    """``perms`` as a JWT's user permissions and limits (nats-io/jwt ``UserPermissionLimits``)."""
    out: dict[str, Any] = {
        "pub": {"allow": list(perms.publish)},
        "sub": {"allow": list(perms.subscribe)},
        **_UNLIMITED,
    }
    if perms.deny_publish:
        out["pub"]["deny"] = list(perms.deny_publish)
    if perms.allow_responses:
        # ttl 0: nats-server's default expiry for a response, as a static allow_responses.
        out["resp"] = {"max": perms.max_responses, "ttl": 0}
    return out


def _user_claims(
    name: str, user_key: nkeys.KeyPair, limits: dict[str, Any] | None, *, tags: Sequence[str]
) -> dict[str, Any]:
    # A user of a scoped key carries no permissions and no limits at all: nats-server refuses
    # one that does ("scoped users require no permissions or limits set").
    nats: dict[str, Any] = {"type": "user", "version": 2, **(limits or {})}
    if tags:
        nats["tags"] = list(tags)
    return _claims(user_key, name, nats)


def _account_claims(
    key: nkeys.KeyPair, name: str, signing_keys: list[dict[str, Any]]
) -> dict[str, Any]:
    nats: dict[str, Any] = {
        "type": "account",
        "version": 2,
        "limits": {
            "subs": _NO_LIMIT,
            "data": _NO_LIMIT,
            "payload": _NO_LIMIT,
            "imports": _NO_LIMIT,
            "exports": _NO_LIMIT,
            "wildcards": True,
            "conn": _NO_LIMIT,
            "leaf": _NO_LIMIT,
        },
    }
    if signing_keys:
        nats["signing_keys"] = signing_keys
    return _claims(key, name, nats)


def _claims(subject: nkeys.KeyPair, name: str, nats: dict[str, Any]) -> dict[str, Any]:
    return {"sub": _public(subject), "name": name, "nats": nats}


def _encode(claims: dict[str, Any], issuer: nkeys.KeyPair) -> str:
    """``claims`` as a JWT signed by ``issuer``, the way nats-io/jwt encodes one."""
    claims = {**claims, "iss": _public(issuer), "iat": int(time.time())}
    # The JWT's id: a hash of its own claims (nats-io/jwt uses SHA-512/256, base32, no padding).
    digest = hashlib.new("sha512_256", _json(claims)).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    signed = f"{_b64(_json(_JWT_HEADER))}.{_b64(_json(claims))}"
    return f"{signed}.{_b64(issuer.sign(signed.encode()))}"


def _creds(user_jwt: str, user_key: nkeys.KeyPair) -> str:
    """A creds file, dashes and all as nats-io/jwt's ``FormatUserConfig`` writes it."""
    return (
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user_key.seed.decode()}\n"
        "------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )


def _server_config(
    operator_jwt: str, system_account: str, accounts: Mapping[str, str], max_control_line: int
) -> str:
    preload = "\n".join(f"  {key}: {jwt}" for key, jwt in accounts.items())
    limit = (
        ""
        if max_control_line <= DEFAULT_MAX_CONTROL_LINE
        else "# Room for the longest user JWT in a client's CONNECT line.\n"
        f"max_control_line: {max_control_line}\n"
    )
    return (
        "# Generated by natsreg: operator mode, accounts preloaded (no account server).\n"
        f"operator: {operator_jwt}\n"
        f"system_account: {system_account}\n"
        "resolver: MEMORY\n"
        f"resolver_preload: {{\n{preload}\n}}\n{limit}"
    )


def _write_secret(path: Path, text: str) -> Path:
    # Created 0600 from the start, so the seed is never readable by others, even briefly.
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    return path


def _new_key(prefix: int) -> nkeys.KeyPair:
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def _public(key: nkeys.KeyPair) -> str:
    public: bytes = key.public_key
    return public.decode()


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")
