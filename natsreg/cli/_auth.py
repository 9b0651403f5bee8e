"""``natsreg auth``: nats-server users and permissions for natsreg's roles, as a static
authorization block or as JWT accounts (the rules themselves are in natsreg.permissions)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ._output import _CliError, _json_lines, _print_data, _say

if TYPE_CHECKING:
    from ..permissions import Role


def _roles(args: argparse.Namespace) -> list[Role]:
    from ..permissions import ALL_SERVICES, Role

    def split(spec: str, option: str) -> tuple[str, tuple[str, ...]]:
        user, _, calls = spec.partition(":")
        callees = tuple(c for c in calls.split(",") if c)
        if not user or (calls and not callees):
            raise _CliError(f"{option} {spec!r}: write USER or USER:SVC,SVC")
        return user, callees

    roles = [Role(kind="registry", user=user) for user in args.registry]
    for spec in args.bridge:
        user, calls = split(spec, "--bridge")
        roles.append(Role(kind="bridge", user=user, calls=calls or (ALL_SERVICES,)))
    roles += [Role(kind="operator", user=user, calls=(ALL_SERVICES,)) for user in args.operator]
    for spec in args.service:
        name, calls = split(spec, "--service")
        roles.append(Role(kind="service", user=name, name=name, calls=calls, events=args.events))
    for spec in args.caller:
        user, calls = split(spec, "--caller")
        if not calls:
            raise _CliError(f"--caller {spec!r}: name the services it calls (USER:SVC,SVC)")
        roles.append(Role(kind="caller", user=user, calls=calls, events=args.events))
    for spec in args.coordinator:
        user, calls = split(spec, "--coordinator")
        if not calls:
            raise _CliError(f"--coordinator {spec!r}: name the services its sagas call")
        roles.append(Role(kind="coordinator", user=user, calls=calls))
    if not roles:
        raise _CliError(
            "no roles: pass --registry, --bridge, --operator, --service, --caller or --coordinator"
        )
    return roles


async def _cmd_auth(args: argparse.Namespace) -> int:

    from .. import _authconfig

    try:
        roles = _roles(args)
        if args.format == "jwt":
            from .._jwt import render_jwt

            if args.out is None:
                raise _CliError("--format jwt writes a config and creds files: pass --out DIR")
            setup = render_jwt(roles, args.prefix, Path(args.out))
            _say(
                f"wrote {setup.config} (nats-server -c), {len(setup.creds)} creds files "
                f"(--creds / NATS_CREDS; each user also needs --inbox-prefix _INBOX_<user>) "
                f"and {setup.system_creds} for server events; new keys each run"
            )
            return 0
        rendered = _authconfig.render_static(roles, args.prefix)
        if args.out is None and _json_lines():
            envs = {
                s.role.user: _authconfig.env_file(s, args.prefix).splitlines()[1:]
                for s in rendered.users
            }
            users = {user: dict(line.split("=", 1) for line in env) for user, env in envs.items()}
            _print_data({"config": rendered.config, "users": users})
            return 0
        if args.out is None:
            print(rendered.config)
            print(
                "# Credentials, shown once: each user's environment "
                "(natsreg reads NATS_USER, NATS_PASSWORD, NATS_INBOX_PREFIX, NATSREG_PREFIX)."
            )
            for secret in rendered.users:
                print("#   " + " ".join(_authconfig.env_file(secret, args.prefix).splitlines()[1:]))
            return 0
        paths = _authconfig.write_static(rendered, args.prefix, Path(args.out))
    except OSError as exc:
        raise _CliError(f"cannot write to {args.out}: {exc.strerror}") from exc
    _say(
        f"wrote {paths[0]} (include it in nats-server.conf) and {len(paths) - 1} env files "
        "with each user's password (mode 0600; shown nowhere else)"
    )
    return 0
