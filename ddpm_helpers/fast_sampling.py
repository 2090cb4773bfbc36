"""Sampling without launch overhead: the denoiser ε_θ(x_t, t) compiled and/or replayed as a CUDA graph.

A DDIM-50 or DDPM-1000 loop calls the U-Net once per step on a batch of fixed shape. At the batch sizes
used for sampling the GPU spends much of each step waiting for the host to launch the U-Net's few hundred
small kernels (3–8 ms per step on an H200, whatever the precision; benchmarks/RESULTS.md). Two remedies,
both applied to the model only, so that the samplers in ``diffusion.py`` stay as they are:

- a **CUDA graph** records the U-Net's kernels once per input shape and replays them with one launch
  (``torch.cuda.CUDAGraph``); no compilation, same kernels, so the same numbers as the eager model;
- ``torch.compile`` fuses the U-Net's norm/activation/elementwise work into fewer kernels (tens of seconds
  of compilation per input shape, worth it for thousands of samples).

Usage::

    fast = compile_for_sampling(model)                  # "auto": a CUDA graph on CUDA, the model itself elsewhere
    x = ddim_sample(fast, (64, 3, 64, 64), schedule, steps=50)
    fast = compile_for_sampling(model, mode="compile+cudagraph")

The wrapper is an ``nn.Module`` with the model's call signature ``(x, t) → ε``; ``state_dict``,
``load_state_dict`` and ``cfg`` are the wrapped model's, so ``generate``/``write_samples`` treat it as the
model itself (the same weights fingerprint in samples.json). It is for sampling only: its outputs carry no
gradient, and in training mode (dropout, BatchNorm statistics) it simply calls the model.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

MODES = ("auto", "off", "compile", "cudagraph", "compile+cudagraph")


def resolve_mode(mode: str, device: torch.device) -> str:
    """The mode that will run on ``device``: CUDA graphs need CUDA, so elsewhere "cudagraph" becomes "off"
    and "compile+cudagraph" becomes "compile"; "auto" is "cudagraph" on CUDA (no compile time, same numbers
    as eager) and "off" elsewhere."""
    if mode not in MODES:
        raise ValueError(f"sampling mode {mode!r}: choose one of {', '.join(MODES)}")
    cuda = torch.device(device).type == "cuda"
    if mode == "auto":
        return "cudagraph" if cuda else "off"
    if not cuda:
        return {"cudagraph": "off", "compile+cudagraph": "compile"}.get(mode, mode)
    return mode


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class _Graph:
    """One captured call: static input buffers, the graph, and its static output."""

    def __init__(self, fn: Callable, x: torch.Tensor, t: torch.Tensor, pool, warmup: int):
        self.x, self.t = x.clone(), t.clone()
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):            # warm-up off the capture stream (cuDNN/cuBLAS/compile set-up)
            for _ in range(warmup):
                fn(self.x, self.t)
        torch.cuda.current_stream(x.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.out = fn(self.x, self.t)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.x.copy_(x)
        self.t.copy_(t)
        self.graph.replay()
        return self.out.clone()                  # the static output is overwritten by the next replay


class SamplingDenoiser(nn.Module):
    """``model(x, t) → ε`` for sampling loops, compiled and/or replayed from CUDA graphs (see the module doc).

    mode: one of MODES (resolved per device by :func:`resolve_mode`); ``mode_used`` says what runs.
    compile_mode: torch.compile's mode ("default", "max-autotune-no-cudagraphs", "reduce-overhead", ...);
    with "compile+cudagraph" keep one without its own CUDA graphs. backend: torch.compile's backend.
    warmup: calls before each capture.
    """

    def __init__(self, model: nn.Module, mode: str = "auto", compile_mode: Optional[str] = None,
                 backend: str = "inductor", warmup: int = 2):
        super().__init__()
        self.model = model
        self.cfg = getattr(model, "cfg", None)
        self.mode_used = resolve_mode(mode, _model_device(model))
        self.warmup = warmup
        fn: Callable = model
        if self.mode_used in ("compile", "compile+cudagraph"):
            kwargs = {"dynamic": False, "backend": backend}
            if compile_mode and compile_mode != "default":
                kwargs["mode"] = compile_mode
            fn = torch.compile(model, **kwargs)
        self.__dict__["_fn"] = fn                # not a submodule: state_dict and parameters stay the model's
        self._graphs: Dict[Tuple, _Graph] = {}
        self._pool = None
        self._storage = self._storage_ptrs()

    # -- the call ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.model(x, t)
        with torch.no_grad():
            if self.mode_used.endswith("cudagraph") and x.is_cuda:
                return self._graph_for(x, t)(x, t)
            return self._fn(x, t)

    def _graph_for(self, x: torch.Tensor, t: torch.Tensor) -> _Graph:
        """The graph for this input shape, dtype and autocast state, captured on first use."""
        autocast = torch.is_autocast_enabled("cuda")
        amp_dtype = torch.get_autocast_dtype("cuda") if autocast else None
        key = (tuple(x.shape), x.dtype, tuple(t.shape), t.dtype, x.device, amp_dtype,
               torch.is_inference_mode_enabled())     # buffers made in inference mode can't be written outside
        graph = self._graphs.get(key)
        if graph is None:
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            # autocast's cache of cast weights must stay off while capturing (weights may change: EMA)
            ctx = (torch.autocast("cuda", dtype=amp_dtype, cache_enabled=False) if autocast
                   else contextlib.nullcontext())
            with ctx:
                graph = self._graphs[key] = _Graph(self._fn, x, t, self._pool, self.warmup)
        return graph

    # -- the wrapped model's identity -------------------------------------------------------------
    def state_dict(self, *args, **kwargs):
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.model.load_state_dict(state_dict, strict=strict, assign=assign)

    def _storage_ptrs(self) -> Tuple[int, ...]:
        return tuple(t.data_ptr() for t in (*self.model.parameters(), *self.model.buffers()))

    def _apply(self, fn, *args, **kwargs):
        """.to()/.cuda()/.half(): graphs read the weights where they were at capture; drop them if they moved."""
        out = super()._apply(fn, *args, **kwargs)
        ptrs = self._storage_ptrs()
        if ptrs != self._storage:
            self._graphs.clear()
            self._storage = ptrs
        return out

    def extra_repr(self) -> str:
        return f"mode_used={self.mode_used!r}, graphs={len(self._graphs)}"


def compile_for_sampling(model: nn.Module, mode: str = "auto", compile_mode: Optional[str] = None,
                         backend: str = "inductor", warmup: int = 2) -> SamplingDenoiser:
    """Wrap ``model`` for sampling loops: see :class:`SamplingDenoiser` and the module doc.

    Put the model on its device first (the mode is resolved from where its parameters are). The model is
    put in eval mode, as sampling needs (dropout off, BatchNorm running statistics).
    """
    return SamplingDenoiser(model.eval(), mode=mode, compile_mode=compile_mode, backend=backend,
                            warmup=warmup).eval()
