"""The compiled kernels.  Importing this package first drops stale on-disk kernel caches.

Numba checks a cached kernel against the modification time of its own source
file only, not of the files of the kernels it calls and inlines: after an
edit to ``activations.py`` or ``blas.py``, a cached ``lstm_layer_forward``
would still run the old inlined code (and can crash).  So the cache as a
whole is keyed on a hash of every source the kernels compile from, and is
emptied when that hash changes.
"""
import hashlib
import pathlib

from .._config import CACHE

_PACKAGE = pathlib.Path(__file__).resolve().parent
_SOURCES = sorted(_PACKAGE.glob("*.py")) + [_PACKAGE.parent / "_config.py", _PACKAGE.parent / "params.py"]
_STAMP_NAME = "nblstm-kernel-sources.sha256"


def _cache_directory():
    """Where Numba keeps this package's cached kernels, or None if it cannot tell."""
    try:
        from numba.core.caching import CacheImpl
    except ImportError:
        return None
    for locator_class in CacheImpl._locator_classes:
        locator = locator_class.from_function(_cache_directory, str(_PACKAGE / "__init__.py"))
        if locator is not None:
            return pathlib.Path(locator.get_cache_path())
    return None


def _drop_stale_cache():
    digest = hashlib.sha256()
    for source in _SOURCES:
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    directory = _cache_directory()
    if directory is None:
        return
    stamp = directory / _STAMP_NAME
    try:
        if stamp.is_file() and stamp.read_text() == digest.hexdigest():
            return
        for cached in list(directory.glob("*.nbi")) + list(directory.glob("*.nbc")):
            cached.unlink(missing_ok=True)
        directory.mkdir(parents=True, exist_ok=True)
        stamp.write_text(digest.hexdigest())
    except OSError:  # a read-only install: Numba falls back to its own checks
        pass


if CACHE:
    _drop_stale_cache()
