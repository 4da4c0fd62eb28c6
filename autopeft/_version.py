"""The package's version, in a module of its own so that modules inside the package can read it
without importing the public facade (which sits above them all)."""

__version__ = "0.1.0"
