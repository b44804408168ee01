"""A small in-memory RethinkDB *test double* that speaks the real wire protocol.

Only for tests: see README.md for the supported subset.  Start one with
:func:`harness.servers.rethinkdb_wire.process.start_rethinkdb_wire_server`.
"""
