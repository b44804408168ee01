"""Benchmarks of celery-leaderfeed: ``python -m bench`` (see ``bench/README.md``).

Not part of the test suite. Every part starts its own servers on free loopback ports and its
own processes, inflicts real faults on them and stops everything it started.
"""
