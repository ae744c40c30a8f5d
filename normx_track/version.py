"""The package's version, in a module of its own: the tracker records it in meta.json
without importing the package root (whose lazy exports sit above every layer)."""
__version__ = "0.1.0"
