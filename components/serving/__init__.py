"""`deblur serve`: the Open Inference Protocol (KServe V2 REST) on kserve's Python model server.

    runtime.py   deblurring one image with a SavedModel (shared with `deblur predict`)
    server.py    the kserve.Model and ModelServer (runs in .venv-serve: kserve, TensorFlow 2.21)
    process.py   start/stop the server as a real process in .venv-serve (standard library)
    client.py    a small V2 REST client (standard library, numpy, Pillow)

Importing this package imports nothing: neither TensorFlow nor kserve nor TFX.
"""
