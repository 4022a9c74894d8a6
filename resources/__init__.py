"""Icons and stylesheets, loaded through importlib.resources."""
from importlib import resources as _resources


def read_text(name: str) -> str:
    return _resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def path_of(name: str):
    """A context manager yielding a real filesystem path for a resource."""
    return _resources.as_file(_resources.files(__name__).joinpath(name))
