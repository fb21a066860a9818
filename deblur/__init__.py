"""deblur: the guided-icDPM deblurring pipeline (library code shared by the CLI and components)."""
__version__ = "0.1.0"
