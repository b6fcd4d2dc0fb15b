"""The package version, in one place (read by setuptools and ``trio_gateway.__version__``)."""

__version__ = "0.1.0"
