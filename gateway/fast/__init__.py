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
aiohttp's parsers", measured in bench/RESULTS.md). What it drops is the framework around
them: no task, future or ``web.Response`` per request. Refusals are prebuilt
bytes; allowed requests are relayed over a pool of keep-alive upstream connections by
callbacks, with flow control on the transports both ways.

- ``prebuilt``: the bytes of the gateway's own answers, built once per config.
- ``upstream``: the keep-alive upstream connections and their pool.
- ``protocol``: the client connection (parsing, deciding, ordering) and the forwarding
  state machine of one request.
- ``engine``: ``FastEngine``, the interface ``gateway.app`` drives.
"""

from gateway.fast.engine import FastEngine

__all__ = ["FastEngine"]
