"""The on-disk kernel cache is dropped per target (CPU or CUDA) when that target's sources change."""
from nblstm import kernels

CPU_FILES = ["cpu_forward.lstm_layer_forward-355.py311.nbi", "cpu_forward.lstm_layer_forward-355.py311.1.nbc",
             "blas.gemm-10.py311.nbi"]
CUDA_FILES = ["cuda_forward.forward_persistent-120.py312.nbi", "cuda_common.gemm_tiles-70.py312.1.nbc"]


def _cache(directory):
    for name in CPU_FILES + CUDA_FILES:
        (directory / name).write_bytes(b"compiled")


def _left(directory):
    return sorted(path.name for path in directory.iterdir() if path.suffix in (".nbi", ".nbc"))


def test_a_changed_source_drops_only_its_own_targets_cached_kernels(tmp_path, monkeypatch):
    sources = {target: tmp_path / f"{target}_source.py" for target in ("cpu", "cuda")}
    for source in sources.values():
        source.write_text("version 1")
    monkeypatch.setattr(kernels, "_sources", lambda target: [sources[target]])
    cache = tmp_path / "cache"
    cache.mkdir()
    _cache(cache)

    def drop_stale():
        for target in ("cpu", "cuda"):
            kernels.drop_stale_cache(cache, target)

    drop_stale()  # no stamps yet: everything goes
    assert _left(cache) == []
    _cache(cache)
    drop_stale()  # nothing changed: everything stays
    assert _left(cache) == sorted(CPU_FILES + CUDA_FILES)
    sources["cuda"].write_text("version 2")
    drop_stale()
    assert _left(cache) == sorted(CPU_FILES)
    _cache(cache)
    sources["cpu"].write_text("version 2")
    drop_stale()
    assert _left(cache) == sorted(CUDA_FILES)


def test_every_kernel_module_has_a_target():
    assert kernels.target_of("cuda_backward") == "cuda"
    assert kernels.target_of("cpu_forward") == kernels.target_of("blas") == "cpu"
    assert all(source.exists() for target in ("cpu", "cuda") for source in kernels._sources(target))
    cuda_sources = {source.name for source in kernels._sources("cuda")}
    assert {"cuda_forward.py", "cuda_backward.py", "cuda_common.py", "params.py"} <= cuda_sources
    assert "cpu_forward.py" not in cuda_sources
