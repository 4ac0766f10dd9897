"""TLS termination per listener: contexts built from the config, certificates reloaded
with it (a renewed certificate is picked up by the next handshake, no restart)."""

from __future__ import annotations

import logging
import os
import ssl

from gateway.config import Config, listeners_of
from gateway.server import sni_recorder

log = logging.getLogger("gateway.tls")


class TLSError(Exception):
    pass


class TLSManager:
    def __init__(self, config: Config, listen: str) -> None:
        self.contexts: dict[str, ssl.SSLContext] = {}
        self._stamps: dict[str, tuple[float, float]] = {}
        self.listen = listen
        for lst in listeners_of(config, listen):
            if lst.tls is not None:
                ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                ctx.minimum_version = ssl.TLSVersion.TLSv1_2
                sni_recorder(ctx)
                self._load(lst.name, ctx, lst.tls.cert, lst.tls.key)
                self.contexts[lst.name] = ctx

    def _load(self, name: str, ctx: ssl.SSLContext, cert: str, key: str) -> None:
        try:
            ctx.load_cert_chain(cert, key)
            self._stamps[name] = (os.stat(cert).st_mtime, os.stat(key).st_mtime)
        except (OSError, ssl.SSLError) as exc:
            raise TLSError(f"listener {name}: cannot load certificate {cert}: {exc}") from None

    def reload(self, config: Config) -> None:
        """Load changed certificate files into the live contexts (new handshakes use them)."""
        for lst in listeners_of(config, self.listen):
            ctx = self.contexts.get(lst.name)
            if ctx is None or lst.tls is None:
                continue
            try:
                stamp = (os.stat(lst.tls.cert).st_mtime, os.stat(lst.tls.key).st_mtime)
            except OSError as exc:
                log.error(
                    "listener %s: certificate unreadable, keeping the old one: %s", lst.name, exc
                )
                continue
            if stamp != self._stamps.get(lst.name):
                try:
                    self._load(lst.name, ctx, lst.tls.cert, lst.tls.key)
                    log.info("listener %s: certificate reloaded", lst.name)
                except TLSError as exc:
                    log.error("%s; keeping the old certificate", exc)
