"""Developer sessions: ``nox`` runs lint, type checks and tests; ``nox -s bench`` is separate.

Every session installs the exact versions in constraints.txt, as CI does; ``nox -s latest``
installs the newest versions pyproject.toml allows instead and runs the suite on them, so a
new upstream release shows up here first, not as a red CI on a fresh machine.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = ["3.11"]
CONSTRAINTS = ("-c", "constraints.txt")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install(*CONSTRAINTS, "ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package, the tests and the benchmarks."""
    session.install(*CONSTRAINTS, "-e", ".[dev]")
    session.run("mypy")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole test suite (the same command as the README and CI)."""
    session.install(*CONSTRAINTS, "-e", ".[test,bench]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=PYTHON, reuse_venv=False)
def latest(session: nox.Session) -> None:
    """The suite on the newest versions pyproject.toml allows (no constraints file).

    When it passes and the versions differ from constraints.txt, refresh that file (see its
    header); when it fails, the release that broke it is in ``pip freeze`` of this session.
    """
    session.install("--upgrade", "--upgrade-strategy", "eager", "-e", ".[dev,bench]")
    session.run("pip", "freeze", "--exclude-editable")
    session.run("mypy")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The benchmark suite, short profile (under two minutes), with its plots; see
    benchmarks/README.md.

    ``nox -s bench -- --profile long`` runs the long one; other arguments go to
    ``python -m benchmarks.run`` too. Results and plots land in benchmarks/results/ (git-ignored).
    The ``bench`` extra adds matplotlib, for the plots.
    """
    session.install(*CONSTRAINTS, "-e", ".[bench]")
    session.run("python", "-m", "benchmarks.run", "--profile", "short", *session.posargs)
