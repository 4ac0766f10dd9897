"""``make run``: the gateway on the example config, in front of the demo upstream."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from importlib import resources

CURL = """
  The gateway listens on http://127.0.0.1:8080 (admin and metrics on http://127.0.0.1:9180).
  Try:
    curl -i -H 'Host: www.acme.test' http://127.0.0.1:8080/hello     # allowed: an endpoint
    curl -i -H 'Host: evil.example' http://127.0.0.1:8080/hello      # blocked: 503
    curl -i -H 'Host: a.shop.acme.test' http://127.0.0.1:8080/       # allowed: wildcard
    curl -s http://127.0.0.1:9180/metrics | grep gateway_requests
    open http://127.0.0.1:9180/ui/ (the console; "Continue read-only" without a token)
    .venv/bin/gateway explain --config {config} evil.example
  Ctrl-C stops both.
"""


def main() -> int:
    config = str(resources.files("gateway") / "examples" / "demo.json")
    upstream = subprocess.Popen([sys.executable, "-m", "gateway.demo_upstream", "--port", "8081"])
    try:
        time.sleep(0.5)
        print(CURL.format(config=os.path.relpath(config)), flush=True)
        gw = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", config, "--drain-delay", "0"]
        )
        try:
            return gw.wait()
        except KeyboardInterrupt:
            gw.terminate()
            return gw.wait()
    finally:
        upstream.terminate()
        upstream.wait()


if __name__ == "__main__":
    sys.exit(main())
