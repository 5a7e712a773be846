"""``relay map`` and ``relay send``: try a sample webhook on the config (a dry run), or on a running relay.

Both read a sample the same way: its body from a file, headers from ``-H 'Name: value'``, and its
Content-Type from ``--content-type``, a ``-H``, or the file's extension (``.json``, ``.xml``,
``.urlencoded``, and ``.multipart`` with the boundary its first line shows).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from relay.cli.arguments import header_arg
from relay.cli.dryrun import dry_run, render
from relay.cli.signing import sign_request
from relay.errors import ConfigError, ConfigProblem, IngressRefused, UnknownSource
from relay.ingress.checks.request import HookRequest
from relay.ingress.verify import build_verifiers
from relay.mapping.config import load_config
from relay.settings import Settings, secret_environment

_BY_EXTENSION = {
    ".json": "application/json",
    ".xml": "text/xml",
    ".urlencoded": "application/x-www-form-urlencoded",
}
SEND_TIMEOUT_S = 30.0


def add_hook_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``relay map`` and ``relay send``."""
    for name, handler, help_text in [
        ("map", map_command, "show what a sample webhook maps to, without Redis or network (a dry run)"),
        ("send", send_command, "sign a sample webhook as its sender would and post it to a relay"),
    ]:
        command = commands.add_parser(name, help=help_text)
        command.add_argument("source", help="the source, as in POST /hooks/SOURCE")
        command.add_argument("file", type=Path, help="the body to send, as the sender sends it")
        command.add_argument(
            "-H", dest="headers", type=header_arg, action="append", default=[], help="'Name: value' (repeat)"
        )
        command.add_argument("--content-type", help="default: from -H, or the file's extension")
        command.add_argument("--config", type=Path, help="mapping config (default: RELAY_CONFIG_PATH)")
        command.add_argument(
            "--url",
            help="the hook's URL, query included (default: http://RELAY_HOST:RELAY_PORT/hooks/SOURCE)",
        )
        command.set_defaults(handler=handler)
        if name == "map":
            command.add_argument("--json", action="store_true", help="print the report as JSON")
            command.add_argument("--verify", action="store_true", help="check the signature too")
            command.add_argument("--client-ip", help="the sender's address, for an ip-allow scheme")


def _content_type(path: Path, body: bytes) -> str | None:
    if path.suffix == ".multipart" and body.startswith(b"--"):
        boundary = body.split(b"\r\n", 1)[0][2:].decode("ascii", "replace")
        return f"multipart/form-data; boundary={boundary}"
    return _BY_EXTENSION.get(path.suffix)


def read_sample(args: argparse.Namespace) -> tuple[CIMultiDict[str], bytes]:
    """The headers and body of the sample the arguments name."""
    try:
        body = Path(args.file).read_bytes()
    except OSError as exc:
        raise ConfigError(
            [ConfigProblem(str(args.file), "file", f"cannot be read: {exc.strerror}")]
        ) from None
    headers: CIMultiDict[str] = CIMultiDict(args.headers)
    guessed = args.content_type or (None if "Content-Type" in headers else _content_type(args.file, body))
    if guessed is not None:
        headers["Content-Type"] = guessed
    return headers, body


def _hook_url(settings: Settings, args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.port}/hooks/{args.source}"


def _config_path(settings: Settings, args: argparse.Namespace) -> Path:
    return Path(args.config) if args.config else settings.config_path


def map_command(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 when a run would be queued, 1 when none, 2 when the ingress would refuse the request."""
    path = _config_path(settings, args)
    config = load_config(path, settings.account_names())
    headers, body = read_sample(args)
    verifier = None
    if args.verify and args.source in config.sources:
        sources = {args.source: config.sources[args.source]}
        verifier = build_verifiers(sources, secret_environment(), str(path))[args.source]
    request = HookRequest("POST", _hook_url(settings, args), headers, body, args.client_ip)
    try:
        report = dry_run(config, args.source, request, verifier, settings.max_body_bytes)
    except IngressRefused as exc:
        answer = {"error": exc.code, "message": exc.message}
        if args.json:
            print(json.dumps({"status": exc.status, **answer}))
        else:
            print(f"the ingress would answer HTTP {exc.status}: {json.dumps(answer)}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0 if report["runs"] else 1


def _shown(url: str) -> str:
    """The URL without its query, which may hold a token."""
    return urlunsplit(urlsplit(url)._replace(query="", fragment=""))


async def _post(request: HookRequest) -> tuple[int, str]:
    timeout = aiohttp.ClientTimeout(total=SEND_TIMEOUT_S)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(URL(request.url, encoded=True), data=request.body, headers=request.headers) as answer,
    ):
        return answer.status, await answer.text()


def send_command(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 on a 2xx answer, 1 on any other answer or none."""
    path = _config_path(settings, args)
    config = load_config(path, settings.account_names())
    if args.source not in config.sources:
        raise UnknownSource(f"no source named {args.source!r} is configured in {path}")
    sources = {args.source: config.sources[args.source]}
    verifier = build_verifiers(sources, secret_environment(), str(path))[args.source]
    headers, body = read_sample(args)
    unsigned = HookRequest("POST", _hook_url(settings, args), headers, body, None)
    request = sign_request(verifier, unsigned, time.time())
    try:
        status, text = asyncio.run(_post(request))
    except (aiohttp.ClientError, TimeoutError) as exc:  # its text may show the URL, and a token in it
        print(f"error: no answer from {_shown(request.url)} ({type(exc).__name__})", file=sys.stderr)
        return 1
    print(f"HTTP {status}")
    print(text)
    return 0 if 200 <= status < 300 else 1
