"""Throughput and latency harness for the gateway (issue 7).

`python -m bench.harness` starts every system under test on loopback, drives each with wrk
(peak throughput, closed loop) and with `bench.paced` (latency at a fixed rate, open loop),
and writes `bench/results/`. See `bench/harness.py` for the options.
"""
