"""Benchmark harness: simulated cameras, the relay under test and its peers, RTSP readers.

Run ``python3 -m benchmarks.run --help``; see benchmarks/README.md.
"""
