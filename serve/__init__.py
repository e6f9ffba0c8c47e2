"""TorchServe serving of personalized generators: request validation, the handler, `.mar` packaging, the server.

`serve.requests` and `serve.handler` are shipped inside every `.mar` next to the torch-free `runtime` package, so
this package's `__init__` imports nothing: the worker process must not need typer, torch or the repo.
"""
