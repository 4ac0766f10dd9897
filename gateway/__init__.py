"""Secure-endpoints gateway: lets a request through only when its Host names one of the
environment's secure endpoints."""

__version__ = "0.1.0"
