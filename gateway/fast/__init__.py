"""The fast engine: a purpose-built ``asyncio.Protocol`` on uvloop.

It sits beside the aiohttp engine (``gateway.server``) behind the same small interface and
passes the same end-to-end tests; any difference between the two on the same bytes is a
bug in one of them (``tests/test_differential.py``). What it keeps from aiohttp is the
part that guards against request smuggling: the strict llhttp request parser
(``aiohttp.http_parser.HttpRequestParser``, or aiohttp's pure-Python parser under
``AIOHTTP_NO_EXTENSIONS=1``). Upstream responses are parsed by the same llhttp (9.4)
through httptools' callbacks, with aiohttp's response leniencies and checks
(``upstream.UpstreamConnection``, ``protocol.response_fields``): aiohttp's
``HttpResponseParser`` builds a message, a ``CIMultiDict`` and a ``StreamReader`` per
response, which cost more than the rest of the relay (a deviation from issue 8's "on
aiohttp's parsers", measured in bench/RESULTS.md). The compiled build also parses the common
request itself, a whole bodyless kept-alive head in one read, with the same llhttp and
aiohttp's checks (``bodyless``), and leaves every other request (a body or a framing field,
an upgrade, an error) to aiohttp's parser: that second deviation skips the message objects
that were a fifth of a refusal's instructions. What it drops is the framework around them:
no task, future or ``web.Response`` per request. Refusals are prebuilt
bytes; allowed requests are relayed over a pool of keep-alive upstream connections by
callbacks, with flow control on the transports both ways.

- ``bodyless``: the common request's parse, held to aiohttp's parser.
- ``prebuilt``: the bytes of the gateway's own answers, built once per config.
- ``upstream``: the keep-alive upstream connections and their pool.
- ``protocol``: the client connection (parsing, deciding, ordering) and the forwarding
  state machine of one request.
- ``engine``: ``FastEngine``, the interface ``gateway.app`` drives.

The same modules, compiled to C by mypyc (``make compile``: ``scripts/compile_fast.py``
copies them to ``gateway/fast_c`` and compiles the copy), are what ``--engine fast`` runs
when that build exists and was made from the sources as they are (``source_digest``: the
whole package, since mypyc compiles against its types; ``engine_class``); otherwise
it runs them as they are, interpreted. aiohttp, yarl and multidict ship C builds of their
hot modules beside the Python ones the same way, and ``GATEWAY_NO_EXTENSIONS=1`` turns the
compiled build off as ``AIOHTTP_NO_EXTENSIONS=1`` does theirs.

No ``bytes + bytes`` in these modules: mypyc (1.20) compiles it to ``CPyBytes_Concat``,
declared as taking over its left operand, which it never releases, so each one leaks that
operand (found by ``bench.memory``: 100 MiB a minute at peak). ``b"".join((a, b))`` costs
the same; ``scripts/compile_fast.py`` refuses a build that contains the primitive.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import cast

from .engine import FastEngine

__all__ = ["FastEngine", "built_digest", "engine_class", "source_digest"]

log = logging.getLogger("gateway")

MODULES = ("bodyless", "chunked", "engine", "headers", "prebuilt", "protocol", "upstream", "view")
COMPILED_PACKAGE = "gateway.fast_c"


def source_digest() -> str:
    """SHA-256 of what a compiled build is made from: every module of the ``gateway``
    package (mypyc compiles the engine against their types, and inlines their ``Final``
    constants) and the interpreter's ABI. A build records the digest it was made from, so
    a build older than any of them is never run. The compiler's version is not part of it:
    a build runs where no compiler is installed (the container image), and a newer mypy
    makes ``make compile`` rebuild (``scripts/compile_fast.py`` compares ``COMPILER``)."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    h.update(f"{sys.implementation.cache_tag}\n".encode())
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("fast_c/"):
            continue
        data = path.read_bytes()
        h.update(b"%s %d\n" % (rel.encode(), len(data)))
        h.update(data)
    return h.hexdigest()


def built_digest() -> str | None:
    """The digest the compiled build was made from; None when there is no (whole) build."""
    try:
        package = importlib.import_module(COMPILED_PACKAGE)
    except ImportError:
        return None
    digest = getattr(package, "SOURCE_DIGEST", None)  # written last: absent mid-build
    return digest if isinstance(digest, str) else None


def engine_class() -> tuple[type[FastEngine], str]:
    """The fast engine to run and which build it is: ``"compiled"``, or ``"interpreted"``
    with the reason in brackets."""
    if os.environ.get("GATEWAY_NO_EXTENSIONS"):
        return FastEngine, "interpreted (GATEWAY_NO_EXTENSIONS is set)"
    built = built_digest()
    if built is None:
        return FastEngine, "interpreted (no compiled build: make compile)"
    if built != source_digest():
        # Never run code older than the sources: an edit not yet compiled would be
        # silently ignored.
        log.warning("the compiled fast engine is older than its sources: running them")
        return FastEngine, "interpreted (the compiled build is stale: make compile)"
    try:
        module = importlib.import_module(f"{COMPILED_PACKAGE}.engine")
    except Exception as exc:  # built for another Python, half removed, or failing to load
        log.warning("the compiled fast engine does not load (%s): running its sources", exc)
        return FastEngine, "interpreted (the compiled build does not load)"
    # The same class, compiled from the same source (the digest says so).
    return cast(type[FastEngine], module.FastEngine), "compiled"
