"""The live server: HTTP session API, audio WebSocket and WHEP for one loaded model.

    python server.py [--host 127.0.0.1] [--port 8080] [--preset tiny|DIR] [--max-sessions N]
                     [--idle-timeout S] [--ice-hosts HOST ...]

Same as ``livehuman serve``. Set ``LIVEHUMAN_TOKEN`` to require ``Authorization: Bearer TOKEN``.
The API is described at ``/v1/openapi.json``; metrics are at ``/metrics``.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    # Imported here, not at the top: spawned children (the RTMP push process) re-import this
    # module, and must not pay for torch and the models.
    from livehuman.cli import USER_ERRORS
    from stream.cli import add_serve_arguments, serve_command

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return serve_command(args)
    except USER_ERRORS as exc:
        print(f"server.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
