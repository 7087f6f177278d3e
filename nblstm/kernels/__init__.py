"""The compiled kernels.  Importing this package first drops stale on-disk kernel caches.

Numba checks a cached kernel against its own source file only, not the files of
the kernels it calls and inlines: after an edit to ``activations.py`` or
``blas.py``, a cached ``lstm_layer_forward`` would still run the old inlined code
(and can crash).  So the cache is keyed on a hash of every source the kernels of
one target compile from, and that target's cached kernels are dropped when its
hash changes.  The CPU kernels (every module here but ``cuda_*``) and the CUDA
kernels (``cuda_*``) never call each other, so an edit to one target's sources
keeps the other's cache (rebuilding the CPU kernels takes minutes).
"""
import hashlib
import pathlib

from .._config import CACHE

_PACKAGE = pathlib.Path(__file__).resolve().parent
_SHARED_SOURCES = [_PACKAGE.parent / "_config.py", _PACKAGE.parent / "params.py"]
CUDA_PREFIX = "cuda_"


def target_of(module_name):
    """'cuda' for a CUDA kernel module (by its name, without .py), else 'cpu'."""
    return "cuda" if module_name.startswith(CUDA_PREFIX) else "cpu"


def _sources(target):
    """The source files the kernels of ``target`` compile from."""
    own = [path for path in sorted(_PACKAGE.glob("*.py")) if target_of(path.stem) == target]
    return own + _SHARED_SOURCES


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


def drop_stale_cache(directory, target):
    """Delete the cached kernels of ``target`` in ``directory`` if its sources changed since they were cached.

    Cache files are named after the kernel's module ("cuda_forward.forward_persistent-120.py311.nbi");
    the hash of the target's sources is kept beside them in nblstm-kernel-sources-<target>.sha256.
    """
    digest = hashlib.sha256()
    for source in _sources(target):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    stamp = directory / f"nblstm-kernel-sources-{target}.sha256"
    try:
        if stamp.is_file() and stamp.read_text() == digest.hexdigest():
            return
        for cached in list(directory.glob("*.nbi")) + list(directory.glob("*.nbc")):
            if target_of(cached.name.split(".")[0]) == target:
                cached.unlink(missing_ok=True)
        directory.mkdir(parents=True, exist_ok=True)
        stamp.write_text(digest.hexdigest())
    except OSError:  # a read-only install: Numba falls back to its own checks
        pass


if CACHE and (_directory := _cache_directory()) is not None:
    for _target in ("cpu", "cuda"):
        drop_stale_cache(_directory, _target)
