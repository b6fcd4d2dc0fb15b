"""Developer sessions: ``nox`` runs lint, type checks and tests; ``nox -s bench`` is separate."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = ["3.11"]


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package, the tests and the benchmarks."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole test suite (the same command as the README and CI)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The benchmark suite, short profile (under two minutes); see benchmarks/README.md.

    ``nox -s bench -- --profile long`` runs the long one; other arguments go to
    ``benchmarks/run.py`` too. Results land in benchmarks/results/ (git-ignored).
    """
    session.install("-e", ".")
    session.run("python", "benchmarks/run.py", "--profile", "short", *session.posargs)
