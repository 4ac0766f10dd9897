"""Pieces of the Locust suite (``bench/locustfile.py``): what a config version allows, the
registry of versions and the decision checks. Plain Python: no gevent, no Locust imports,
so ``bench.locust_run`` (which must not be gevent-patched) can use them too.

The package name cannot shadow the ``locust`` library: Locust is imported before it loads
the locustfile, and this package is only ever imported as ``bench.locust``.
"""
