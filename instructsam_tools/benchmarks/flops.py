"""FLOPs of a piece of work without doing its arithmetic, and peak resident memory.

`FlopCounter(shape_only=True)` is a torch dispatch mode that counts FLOPs with torch's own formulas (per module
path, like `torch.utils.flop_counter.FlopCounterMode`) and replaces the result of every matmul, convolution and
attention kernel by zeros of the right shape, dtype and strides (computed on the meta device); every other op runs
for real. The program takes the same path as a real pass (data-dependent Python such as Qwen3-VL's grid
bookkeeping, the tracker's session logic and the pipeline's post-processing run on real tensors), so the counted
operator shapes, and hence the FLOPs, are those of a real pass, while a full-size keyframe costs seconds instead of
minutes and the weights can be uninitialised memory that is never read (`full_size.build_shell`). Only FLOPs,
shapes and activation memory are meaningful under it, never values. The CPU attention kernel, which torch's
registry leaves out (it knows the CUDA kernels), is counted too.
"""
from __future__ import annotations

import re
import time
import weakref
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map_only
from torch.utils.flop_counter import flop_registry, shape_wrapper
from torch.utils.module_tracker import ModuleTracker

aten = torch.ops.aten


def _attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """q @ k^T and attn @ v for (B, H, Lq, E) x (B, Hk, Lk, E): heads of the query (grouped-query attention
    shares key/value heads but not the arithmetic). Masked positions are counted (an upper bound, as torch's)."""
    b, h, lq, e = query_shape
    lk, ev = key_shape[-2], value_shape[-1]
    return 2 * b * h * lq * lk * e + 2 * b * h * lq * lk * ev


def _registry() -> dict:
    """torch's FLOP formulas (matmuls, convolutions, CUDA attention kernels) + the CPU attention kernel, by op."""
    formulas = {packet: formula for packet, formula in flop_registry.items()}
    formulas[aten._scaled_dot_product_flash_attention_for_cpu] = shape_wrapper(_attention_flops)
    for packet in (aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_flash_attention):
        formulas[packet] = shape_wrapper(_attention_flops)  # also GQA-tolerant
    return formulas


_FORMULAS = _registry()
# ops whose arithmetic ShapeOnly mode skips (everything with a formula that is a forward kernel)
_SKIPPED = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten.convolution,
            aten._scaled_dot_product_flash_attention_for_cpu, aten._scaled_dot_product_efficient_attention,
            aten._scaled_dot_product_flash_attention}


def _zeros_like_meta(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cpu").zero_()


def _fast_output(func, args) -> torch.Tensor | None:
    """Zeros shaped like a matmul's result without the (slow, Python) meta kernels; None for other ops."""
    packet = func._overloadpacket
    if packet is aten.mm:
        a, b = args[0], args[1]
        shape = (a.shape[0], b.shape[1])
    elif packet is aten.addmm:
        a, b = args[1], args[2]
        shape = (a.shape[0], b.shape[1])
    elif packet is aten.bmm:
        a, b = args[0], args[1]
        shape = (a.shape[0], a.shape[1], b.shape[2])
    elif packet is aten.baddbmm:
        a, b = args[1], args[2]
        shape = (a.shape[0], a.shape[1], b.shape[2])
    else:
        return None
    return torch.zeros(shape, dtype=a.dtype)


class FlopCounter(TorchDispatchMode):
    """Counts FLOPs per module path with torch's formulas (attributed like torch's FlopCounterMode, through
    ModuleTracker). With shape_only=True the counted ops return zeros instead of computing (see the module
    docstring). On the tiny model it counts exactly what torch's FlopCounterMode (with the CPU attention formula)
    counts (tested)."""

    def __init__(self, shape_only: bool = True):
        super().__init__()
        self.shape_only = shape_only
        self.counts: dict[str, int] = defaultdict(int)
        self._tracker = ModuleTracker()

    @property
    def tracker(self) -> ModuleTracker:
        """Enter this around the mode (count_flops does): it names the modules the FLOPs are attributed to."""
        return self._tracker

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func._overloadpacket
        if packet not in _FORMULAS and func is not torch.ops.prim.device.default:
            # Under torch.inference_mode (SAM3's tracker runs in it) composite ops such as aten.linear or
            # aten.matmul reach the mode undecomposed: decompose them so their matmuls are seen (as FlopCounterMode).
            with self:
                decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
        if self.shape_only and packet in _SKIPPED:
            out = _fast_output(func, args) if not kwargs else None
            if out is None:  # convolutions and attention: their output shapes from the meta kernels
                meta_args, meta_kwargs = tree_map_only(torch.Tensor, lambda t: t.to("meta"), (args, kwargs))
                out = tree_map_only(torch.Tensor, _zeros_like_meta, func(*meta_args, **meta_kwargs))
        else:
            out = func(*args, **kwargs)
        formula = _FORMULAS.get(packet)
        if formula is not None:
            flops = formula(*args, **kwargs, out_val=out)
            for parent in set(self._tracker.parents):
                self.counts[parent] += flops
        return out


class FlopCount:
    """FLOPs of one piece of work: `total` and `by_module` (dotted module paths as ModuleTracker names them: the
    class of the module called from outside any module, then attribute names, e.g. "Sam3VisionModel.backbone")."""

    def __init__(self, counts: dict[str, int]):
        self.by_module = dict(counts)
        self.total = self.by_module.get("Global", 0)

    def top_level(self) -> dict[str, int]:
        """FLOPs per module called directly by non-module code (no dot in the path)."""
        return {k: v for k, v in self.by_module.items() if "." not in k and k != "Global"}

    def get(self, path: str) -> int:
        return self.by_module.get(path, 0)


def count_flops(fn: Callable[[], object], shape_only: bool = True) -> tuple[FlopCount, object]:
    """Run fn() under a FlopCounter; returns the counts and fn's result."""
    counter = FlopCounter(shape_only=shape_only)
    with torch.no_grad(), counter.tracker, counter:  # the mode re-enters itself to decompose: no state in __enter__
        result = fn()
    return FlopCount(counter.counts), result


# ---- memory ---------------------------------------------------------------------------------------------------------
class MemoryTracker(TorchDispatchMode):
    """Bytes of the tensor storages created while it is active and still alive: the current and the peak total.

    Counts what a pass allocates (activations, caches, outputs), not tensors that existed before (weights). Storages
    are followed through weak references, so views share their base's bytes and freed tensors leave the total.
    Unlike RSS it does not depend on whether the allocator could reuse memory it already held."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._bytes: dict[int, int] = {}

    def _free(self, key: int) -> None:
        self.live -= self._bytes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
                if nbytes and key not in self._bytes:
                    self._bytes[key] = nbytes
                    self.live += nbytes
                    weakref.finalize(storage, self._free, key)
        self.peak = max(self.peak, self.live)
        return out


def measure_activations(fn: Callable[[], object]) -> tuple[int, int, object]:
    """(peak bytes allocated by fn and alive at once, bytes it allocated that are still alive after it, result)."""
    tracker = MemoryTracker()
    with tracker:
        result = fn()
    import gc

    gc.collect()
    return tracker.peak, tracker.live, result


def _status_kb(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")
    return int(match.group(1))


def rss_bytes() -> int:
    """Current resident set size of this process."""
    return _status_kb("VmRSS") * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size since the process started or since the last reset_peak_rss()."""
    return _status_kb("VmHWM") * 1024


def measure_peak(fn: Callable[[], object]) -> tuple[int, float, object]:
    """(peak RSS above the RSS before fn, seconds, fn's result)."""
    import gc

    gc.collect()
    reset_peak_rss()
    before = rss_bytes()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return max(0, peak_rss_bytes() - before), seconds, result


def parameter_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


__all__ = ["FlopCounter", "FlopCount", "count_flops", "MemoryTracker", "measure_activations", "rss_bytes",
           "reset_peak_rss", "peak_rss_bytes", "measure_peak", "parameter_bytes"]

