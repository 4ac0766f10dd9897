"""The floor of the aiohttp stack: a low-level `aiohttp.web.Server` on uvloop whose handler
returns a fixed 503, with no Host check, routing or middleware.

No gateway built on aiohttp's server can refuse requests faster than this, so the
gateway's refused figure is read as a fraction of it.

    python -m bench.floor --listen 127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import uvloop
from aiohttp import web

BODY = "Host header does not match\n"


async def _refuse(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response(status=503, text=BODY, headers={"Cache-Control": "no-store"})


async def serve(host: str, port: int) -> None:
    # access_log=None: aiohttp would otherwise format a log line per request even with
    # logging unconfigured, which is not part of the floor.
    server = web.Server(_refuse, access_log=None)
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(server, host, port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    listener.close()
    await server.shutdown(timeout=0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    uvloop.run(serve(host, int(port)))


if __name__ == "__main__":
    main()
