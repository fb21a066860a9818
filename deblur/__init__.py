"""deblur: the `deblur` command line (argument parsing and printing) and `deblur predict`.

The top layer: it calls the library functions of the layers below (core, metrics, trainer,
components, pipelines) and nothing imports it (tests/test_layering.py)."""
__version__ = "0.1.0"
