"""``natsreg docs``: API documents of the live fleet, from the registry's view.

    natsreg docs asyncapi > fleet.yaml            # AsyncAPI 3.0 of the NATS side, YAML
    natsreg docs asyncapi -o fleet.json           # JSON (from the name, or --format json)

The CLI (``natsreg.cli``) connects and hands over here: :func:`add_parser` builds the
command's arguments, :func:`asyncapi_document` asks the registry, :func:`write` writes.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client as NATS

from .. import wire
from ..client._registry_api import RegistryApi

__all__ = ["FORMATS", "add_parser", "asyncapi_document", "write"]

FORMATS = ("yaml", "json")


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """The ``docs`` command's arguments, on ``commands`` (``common``: the connection flags)."""
    docs = commands.add_parser(
        "docs",
        parents=[common],
        help="API documents of the live fleet (AsyncAPI of the NATS side)",
        description="Write an API document of every endpoint the registry lists, in any "
        "language: 'asyncapi' is AsyncAPI 3.0 of the NATS side (one request-reply "
        "operation per subject). The bridge serves OpenAPI at /_natsreg/openapi.json.",
    )
    docs.add_argument("document", choices=("asyncapi",), help="which document")
    docs.add_argument(
        "-o", "--output", metavar="FILE", help="write to FILE (default: standard output)"
    )
    docs.add_argument(
        "--format",
        choices=FORMATS,
        help="yaml or json (default: json for an --output ending in .json, else yaml)",
    )


async def asyncapi_document(
    nc: NATS, prefix: str, servers: list[str]
) -> tuple[dict[str, Any], wire.Snapshot]:
    """The AsyncAPI document of what the registry on ``prefix`` lists, its servers
    ``servers``; and the registry's answer it came from (whether it was warming up...)."""
    # Imported here: jsonschema takes a while to import, and every other command would pay.
    from .._apidocs import asyncapi

    snapshot = await RegistryApi(nc, prefix=prefix).instances()
    return asyncapi(snapshot.instances, servers), snapshot


def write(document: dict[str, Any], output: str | None, fmt: str | None) -> None:
    """``document`` to ``output`` (standard output when None) as ``fmt``. A file is replaced
    whole or not at all: a failure leaves the previous document in place."""
    if fmt is None:
        fmt = "json" if output is not None and output.endswith(".json") else "yaml"
    if fmt == "json":
        text = msgspec.json.format(msgspec.json.encode(document), indent=2).decode() + "\n"
    else:
        import yaml  # only this command writes YAML

        text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    target = Path(output)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
