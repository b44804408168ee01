"""What the tests and the benchmarks both use: server launchers, checkers, deadline polls.

Not part of the installed package (pyproject's ``packages.find`` includes ``celery_leaderfeed*``
only); both ``tests/`` and ``bench/`` import it from the repository root.
"""
