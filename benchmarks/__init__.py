"""The benchmark suite of the gateway: ``python -m benchmarks.run --profile short|long``.

Benchmark tooling, never imported by ``trio_gateway``. A package so that the tests import its
parts by their full names (``from benchmarks.mock_upstream import MockUpstream``); this module
imports nothing, so ``python -m benchmarks.upstream_server`` stays free of the gateway's package.
The modules (benchmarks/README.md has the details):

- ``run``: the command line; ``publish``: tables and plots from a results JSON;
- ``profiles``, ``phases``, ``scenarios``, ``results``: how much to run, measuring one phase,
  the scenarios, what they measured;
- ``loadgen`` over ``http_client`` (the one HTTP/1.1 client of the suite): the load generator;
- ``mock_upstream`` (with ``mock_answers``) and ``upstream_server``: the mock LLM upstream;
- ``scripted_provider``: a provider that plays a script, for tests that drive the runtime
  without HTTP;
- ``floor_relay``: the bare and quart-trio relays of the ``floor`` scenario;
- ``processes``, ``procstats``, ``profiling``: child processes, ``/proc``, py-spy;
- ``summary``, ``targets``, ``report``, ``tables``, ``plots``: numbers, the result document,
  its markdown and its PNG plots.
"""
