"""A tiny upstream for ``make run`` and the tests: answers every request with what it saw.

``GET /anything`` answers JSON naming the method, path, headers and body size it received,
so a person (or a test) sees exactly what the gateway forwarded. A few paths exist for
tests of the proxy: ``/__sleep/S`` answers after S seconds, ``/__bytes/N`` streams N bytes,
``/__ws`` is a WebSocket echo.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import orjson
from aiohttp import WSMsgType, web

CHUNK = 64 * 1024


async def echo(request: web.Request) -> web.StreamResponse:
    size = 0
    async for chunk in request.content.iter_chunked(CHUNK):
        size += len(chunk)
    return web.Response(
        body=orjson.dumps(
            {
                "upstream": request.app["name"],
                "method": request.method,
                "path": request.raw_path,
                "headers": [
                    [k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers
                ],
                "body_bytes": size,
            }
        ),
        content_type="application/json",
    )


async def sleep(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.match_info["seconds"]))
    return web.Response(text="slept\n")


async def stream_bytes(request: web.Request) -> web.StreamResponse:
    n = int(request.match_info["n"])
    resp = web.StreamResponse()
    if request.query.get("length") != "0":
        resp.content_length = n
    await resp.prepare(request)
    block = b"x" * CHUNK
    sent = 0
    while sent < n:
        part = block[: min(CHUNK, n - sent)]
        await resp.write(part)
        sent += len(part)
    await resp.write_eof()
    return resp


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


def make_app(name: str = "demo-upstream") -> web.Application:
    app = web.Application(client_max_size=1024**3)
    app["name"] = name
    app.router.add_get("/__sleep/{seconds}", sleep)
    app.router.add_get("/__bytes/{n}", stream_bytes)
    app.router.add_get("/__ws", websocket)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def _serve(host: str, port: int, name: str) -> None:
    runner = web.AppRunner(make_app(name), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    print(f"listening {host}:{bound}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser(description="demo upstream that echoes requests")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument("--name", default="demo-upstream")
    args = p.parse_args()
    try:
        import uvloop

        uvloop.run(_serve(args.host, args.port, args.name))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
