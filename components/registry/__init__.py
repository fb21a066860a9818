"""The versioned model registry (registry.py), its TFX pusher (component.py) and the
`deblur registry` command (cli.py). Importing this package imports neither TensorFlow nor TFX."""
from components.registry.registry import (  # noqa: F401
    DEFAULT_MODEL_NAME, Registry, RegistryError, load_latest)
