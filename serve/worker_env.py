"""Environment variables `cli.py serve` sets for its TorchServe workers and the handler reads (standard library
only: shipped in every `.mar`, imported by serve/server.py without the runtime)."""

PEOPLE_ROOT_ENV = "MY3DGEN_PEOPLE_ROOT"
"""The folder that holds one `<model name>/` folder of adapters per model."""
BACKEND_ENV = "MY3DGEN_BACKEND"
"""Every worker's backend, over the packaged one (`cli.py serve --backend`)."""
PRECISION_ENV = "MY3DGEN_PRECISION"
"""Every worker's precision, over the packaged one (`cli.py serve --precision`)."""
