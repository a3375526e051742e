"""The ``shopcast`` command line: serve, config, cert, token, push-url, export, bench.

Exit status: 0 on success, 2 for a configuration or usage error (the message
names the key or flag), 1 for anything else that stops a command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import signal
import sys
import time
from typing import Any, Sequence

import trio

import shopcast
from shopcast.server._config import Config, ConfigError, load_config, render_config

__all__ = ["main"]

EXIT_CONFIG = 2


def _add_config_flags(parser: argparse.ArgumentParser, *, network: bool) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="TOML file overriding conf/default.toml")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="where certificates, keys and data live (server.data_dir)")
    if network:
        parser.add_argument("--host", metavar="ADDR",
                            help='address to listen on; "::" is every interface (server.host)')
        parser.add_argument("--port", metavar="PORT", type=int,
                            help="TCP and UDP port for HTTPS, HTTP/3 and WebTransport (server.port)")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shopcast",
        description="shopcast: a live-commerce media server (RTMP and WebTransport in, "
                    "MoQ out, chat and Buy Now beside the video).")
    parser.add_argument("--version", action="version", version=f"shopcast {shopcast.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server",
                                description="Run the server until SIGINT or SIGTERM.")
    _add_config_flags(serve, network=True)

    config = commands.add_parser("config", help="print the effective configuration",
                                 description="Print the configuration after every override, as TOML.")
    _add_config_flags(config, network=True)

    cert = commands.add_parser("cert", help="show the TLS certificate's SHA-256 and expiry",
                               description="Show (making it if needed) the certificate the server uses.")
    _add_config_flags(cert, network=False)

    token = commands.add_parser("token", help="mint an access token",
                                description="Mint an access token signed with the API key.")
    _add_config_flags(token, network=False)
    token.add_argument("--role", required=True, choices=("viewer", "host", "operator", "service"),
                       help="what the token allows")
    token.add_argument("--room", required=True, metavar="ID",
                       help='the room it is for; "*" (operator and service only) for every room')
    token.add_argument("--ttl", type=int, metavar="SECONDS",
                       help="lifetime in seconds (default: tokens.default_ttl_s)")
    token.add_argument("--subject", default="cli", metavar="NAME",
                       help="who holds the token (default: cli)")

    push = commands.add_parser(
        "push-url", help="print a room's RTMP push URL with its stream key",
        description="Print rtmp://HOST:PORT/live/STREAM_KEY for ROOM, making the room (owned by "
                    "the operator) and its key when they do not exist yet. Works while the server "
                    "runs: both use the database in the data directory.")
    _add_config_flags(push, network=False)
    push.add_argument("room", metavar="ROOM", help="the room id (names its broadcast)")
    push.add_argument("--rotate", action="store_true",
                      help="replace the key; the old one is refused from then on")

    operator = commands.add_parser(
        "operator", help="create an operator account",
        description="Create an operator account (operators cannot register through the API). "
                    "The password is read from standard input, one line, or asked for.")
    _add_config_flags(operator, network=False)
    operator.add_argument("action", choices=("create",), help="what to do")
    operator.add_argument("name", metavar="NAME", help="the operator's account name")

    export = commands.add_parser(
        "export", help="write a room's recording as fragmented MP4",
        description="Write the recording of ROOM (in the data directory) as a fragmented MP4 "
                    "(H.264 + AAC) that ffmpeg, ffprobe and browsers play.")
    _add_config_flags(export, network=False)
    export.add_argument("room", metavar="ROOM", help="the room id")
    export.add_argument("file", metavar="FILE.mp4", help="where to write the MP4 ('-' for stdout)")

    # Listed for `shopcast --help` only: main() hands `bench ...` to the bench's own parser.
    commands.add_parser("bench", help="run the benchmark suite (see `shopcast bench --help`)",
                        add_help=False)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    server: dict[str, Any] = {}
    if getattr(args, "data_dir", None):
        server["data_dir"] = args.data_dir
    if getattr(args, "host", None):
        server["host"] = args.host
    if getattr(args, "port", None) is not None:
        server["port"] = args.port
    return {"server": server} if server else {}


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config, overrides=_overrides(args))


def _cmd_serve(config: Config) -> int:
    from shopcast.server._app import run_server
    from shopcast.server._log import configure_logging

    configure_logging(config.log.format, config.log.level)

    async def serve() -> None:
        shutdown = trio.Event()
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def watch_signals() -> None:
                    async for _ in signals:
                        if shutdown.is_set():
                            # A second signal means now: skip the drain.
                            nursery.cancel_scope.cancel()
                            return
                        shutdown.set()

                async def run_then_stop(task_status: trio.TaskStatus[Any]) -> None:
                    await run_server(config, shutdown=shutdown, task_status=task_status)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch_signals)
                _print_banner(await nursery.start(run_then_stop))

    from shopcast.plugins import PluginError

    failed = False
    try:
        trio.run(serve)
    except* PluginError as group:
        # A plugin that cannot load (an unknown hook, a missing dependency) is
        # a configuration error: say which, exit 2.
        for exc in group.exceptions:
            print(f"shopcast: plugin error: {exc}", file=sys.stderr)
        failed = True
    return EXIT_CONFIG if failed else 0


def _print_banner(started: Any) -> None:
    app = started.app
    lines = [
        f"shopcast {shopcast.__version__} is serving",
        f"  web:          https://localhost:{started.port}/",
        *([f"  demo room:    https://localhost:{started.port}/live/{app.config.demo.room}"]
          if app.config.demo.enabled else []),
        f"  host console: https://localhost:{started.port}/host",
        f"  health:       curl -k https://localhost:{started.port}/healthz",
        f"  webtransport: {app.webtransport_base_url}",
        f"  certificate:  sha256 {app.certificate.sha256_hex}"
        f" (until {app.certificate.not_after:%Y-%m-%d %H:%M} UTC)",
        f"  data:         {app.data_dir}",
    ]
    if app.api_key_created:
        lines += [
            "  A new API key was made (kept in the data directory; shown only now):",
            f"    api_key    = {app.api_key.key_id}",
            f"    api_secret = {app.api_key.secret}",
        ]
    print("\n".join(lines), flush=True)


def _cmd_config(config: Config) -> int:
    sys.stdout.write(render_config(config))
    return 0


def _cmd_cert(config: Config) -> int:
    from shopcast.server._certs import CertificateStore

    tls = config.tls
    config.data_path.mkdir(parents=True, exist_ok=True)
    store = CertificateStore(config.data_path, cert_file=tls.cert_file, key_file=tls.key_file,
                             names=config.server.public_names,
                             validity_days=tls.self_signed_validity_days,
                             renew_before=dt.timedelta(hours=tls.renew_before_h))
    cert = store.load(dt.datetime.now(dt.timezone.utc))
    print(f"sha256      {cert.sha256_hex}")
    print(f"not_before  {cert.not_before.isoformat()}")
    print(f"not_after   {cert.not_after.isoformat()}")
    print(f"self_signed {'yes' if cert.self_signed else 'no'}")
    print(f"file        {cert.cert_path}")
    return 0


def _cmd_token(config: Config, args: argparse.Namespace) -> int:
    from shopcast.server._tokens import TokenAuthority, load_or_create_api_key

    key, created = load_or_create_api_key(config.data_path, config.tokens.api_key,
                                          config.tokens.api_secret)
    if created:
        print(f"made a new API key {key.key_id} in {config.data_path}", file=sys.stderr)
    authority = TokenAuthority([key], max_ttl_s=config.tokens.max_ttl_s)
    ttl = args.ttl if args.ttl is not None else config.tokens.default_ttl_s
    try:
        token = authority.mint(subject=args.subject, role=args.role, room=args.room,
                               ttl_s=ttl, now=time.time())
    except ValueError as exc:
        print(f"shopcast token: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(token)
    return 0


def _cmd_push_url(config: Config, args: argparse.Namespace) -> int:
    from shopcast.server._rtmp import push_url
    from shopcast.server._stream_keys import StreamKeyStore, valid_room_id

    if not valid_room_id(args.room):
        print(f"shopcast push-url: invalid room id {args.room!r}: 1 to 64 letters, digits, '_', '.' "
              "or '-', starting with a letter or digit", file=sys.stderr)
        return EXIT_CONFIG
    store = StreamKeyStore(config.data_path, secret_file=config.rtmp.stream_key_secret_file)
    store.initialize()
    key = store.rotate(args.room) if args.rotate else store.get_or_create(args.room)
    rtmp = config.rtmp
    host = rtmp.public_host or (config.server.public_names or ("localhost",))[0]
    if key.created:
        print(f"made room {args.room} (owner: operator) and its stream key", file=sys.stderr)
    elif args.rotate:
        print(f"new stream key for room {args.room}; the previous one no longer works", file=sys.stderr)
    print(push_url(host, rtmp.port, rtmp.app, key.key))
    return 0


def _cmd_operator(config: Config, args: argparse.Namespace) -> int:
    import getpass

    from shopcast.plugins._accounts import create_operator
    from shopcast.server._routing import HTTPError

    password = (sys.stdin.readline().rstrip("\n") if not sys.stdin.isatty()
                else getpass.getpass(f"password for operator {args.name}: "))
    try:
        account = trio.run(create_operator, config, args.name, password)
    except (ValueError, HTTPError) as exc:
        print(f"shopcast operator: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"operator {account['name']} created (id {account['id']})")
    return 0


def _cmd_export(config: Config, args: argparse.Namespace) -> int:
    from shopcast.server._recording import export_mp4, recording_path

    path = recording_path(config.data_path / config.recording.directory, args.room)
    if path is None:
        print(f"shopcast export: invalid room id {args.room!r}", file=sys.stderr)
        return EXIT_CONFIG
    if not path.exists():
        print(f"shopcast export: room {args.room} has no recording in {path.parent}", file=sys.stderr)
        return 1
    try:
        if args.file == "-":
            summary = export_mp4(path, sys.stdout.buffer)
        else:
            with open(args.file, "wb") as out:
                summary = export_mp4(path, out)
    except (ValueError, OSError) as exc:
        print(f"shopcast export: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.file}: {summary['duration_s']:.3f} s, {summary['video_samples']} video and "
          f"{summary['audio_samples']} audio samples in {summary['fragments']} fragments", file=sys.stderr)
    if summary.get("segments_left_out"):
        print(f"shopcast export: {summary['segments_left_out']} of {summary['segments']} segments left out: "
              "their encoder's configuration differs from the last one's", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``shopcast`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # The bench has its own parser; argparse's REMAINDER would refuse flags that come first.
        from shopcast.bench import main as bench_main
        return bench_main(argv[1:])
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG
    try:
        config = _load(args)
    except ConfigError as exc:
        print(f"shopcast: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "serve":
        return _cmd_serve(config)
    if args.command == "config":
        return _cmd_config(config)
    if args.command == "operator":
        return _cmd_operator(config, args)
    if args.command == "cert":
        return _cmd_cert(config)
    if args.command == "push-url":
        return _cmd_push_url(config, args)
    if args.command == "export":
        return _cmd_export(config, args)
    return _cmd_token(config, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
