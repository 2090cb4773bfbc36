"""Taught in notebooks 01, 02, 03, 04, 05, 06.

Exercises that check themselves: a short task per cell, and a checker that says pass, or fail with a hint.

Each notebook (01–06) ends with at least three exercises; the notebook calls each checker by its name:

    def my_q_sample(x0, t, noise, schedule):
        ...                                  # the learner's answer; an empty body is "not attempted"
    exercises.check("q_sample", my_q_sample)  # prints one line: pass, fail + hint, or not attempted

A checker runs the answer on known values and on fresh random inputs (a new seed on every call, reported in the
result), compares with the package's tested implementation, and on a mismatch runs each typical mistake on the same
inputs: the mistake that gives the learner's numbers names the hint. So an answer hard-coded to one case fails, and
every typical mistake gets its own hint. ``solution()`` and ``wrong_answers()`` are there for teachers and tests; the
notebooks do not print them. Later notebooks (06) add their own exercises with :func:`register`.

Imports only the core and the oracle (a lesson aid before it); a check that needs a trained model takes it as an
argument.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import UNetConfig
from .diffusion import ddim_step, min_snr_weight, p_sample, perturbed_noise, q_posterior_mean, q_sample
from .embeddings import sinusoidal_embedding
from .oracle import GaussianOracle
from .schedule import NoiseSchedule
from .unet import DoubleConv, Down, UNet, Up, replace_time_injection

PASS, FAIL, NOT_ATTEMPTED = "pass", "fail", "not attempted"


# ---------------------------------------------------------------------------------------------
# The API: Result, Mistake, WrongAnswer, Exercise, the registry
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Result:
    """The verdict of one check: status "pass" | "fail" | "not attempted", a message (the hint on a fail)."""

    name: str
    status: str
    message: str = ""
    seed: int | None = None

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def __str__(self) -> str:
        mark = {PASS: "✓", FAIL: "✗", NOT_ATTEMPTED: "·"}[self.status]
        tail = f": {self.message}" if self.message else ""
        return f"{mark} {self.name}: {self.status}{tail}"


@dataclass(frozen=True)
class Mistake:
    """A typical wrong answer (a callable with the answer's signature) and the hint its check must give."""

    label: str
    answer: Any
    hint: str


@dataclass(frozen=True)
class WrongAnswer:
    """What :meth:`Exercise.wrong_answers` yields: the mistake's label, the wrong answer, the hint it must produce."""

    label: str
    answer: Any
    hint: str


class Fail(Exception):
    """Raised inside a checker with the hint to show."""


class NotAttempted(Exception):
    """Raised inside a checker when the answer is empty (None, ``...``, a body that returns None)."""


Checker = Callable[[Any, torch.Generator, "Exercise"], None]


@dataclass(frozen=True)
class Exercise:
    """One exercise: which notebook, its name, the task (prompt), its checker, its solution and typical mistakes.

    ``check(answer)`` → :class:`Result`; never raises for a bad or empty answer.
    """

    notebook: int
    name: str
    prompt: str
    checker: Checker
    reference: Any
    mistakes: tuple[Mistake, ...] = field(default_factory=tuple)

    def check(self, answer: Any, seed: int | None = None) -> Result:
        """Check answer on known values and on random inputs drawn from ``seed`` (a fresh one when None)."""
        if seed is None:
            seed = random.SystemRandom().randrange(2 ** 31)
        if _is_empty(answer):
            return Result(self.name, NOT_ATTEMPTED, "write your answer in the cell above, then run this cell", seed)
        if not callable(answer):
            return Result(self.name, FAIL, f"expected a function, got {type(answer).__name__}", seed)
        gen = torch.Generator().manual_seed(seed)
        try:   # fork_rng: building the check's modules must not move the notebook's global random state
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                self.checker(answer, gen, self)
        except NotAttempted:
            return Result(self.name, NOT_ATTEMPTED, "your function returned None: fill in its body", seed)
        except Fail as fail:
            return Result(self.name, FAIL, str(fail), seed)
        return Result(self.name, PASS, "", seed)

    def solution(self) -> Any:
        """An answer that passes (for teachers and tests; the notebooks do not print it)."""
        return self.reference

    def wrong_answers(self) -> list[WrongAnswer]:
        """The typical mistakes, each with the hint its check must produce."""
        return [WrongAnswer(m.label, m.answer, m.hint) for m in self.mistakes]


_REGISTRY: dict[str, Exercise] = {}


def register(exercise: Exercise) -> Exercise:
    """Add an exercise (a later notebook's module calls this); names are unique."""
    if exercise.name in _REGISTRY:
        raise ValueError(f"an exercise named {exercise.name!r} is already registered")
    _REGISTRY[exercise.name] = exercise
    return exercise


def all_exercises(notebook: int | None = None) -> Iterator[Exercise]:
    """Every registered exercise (or one notebook's), by notebook, in the order the notebook asks them."""
    for ex in sorted(_REGISTRY.values(), key=lambda e: e.notebook):
        if notebook is None or ex.notebook == notebook:
            yield ex


def get(name: str) -> Exercise:
    """The exercise called name (the error lists the names there are)."""
    if name not in _REGISTRY:
        raise KeyError(f"no exercise named {name!r}; there are {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def check(name: str, answer: Any, seed: int | None = None) -> Result:
    """Check answer against the exercise called name, print a one-line verdict and return the :class:`Result`.

    Never raises for the answer (an empty one is "not attempted"), so an unanswered notebook still runs.
    """
    result = get(name).check(answer, seed)
    print(result)
    return result


# ---------------------------------------------------------------------------------------------
# Checking helpers: run answer, solution and mistakes on the same cases; the matching mistake names the hint
# ---------------------------------------------------------------------------------------------
def _is_empty(answer: Any) -> bool:
    return answer is None or answer is Ellipsis or (isinstance(answer, str) and not answer.strip())


def _outcome(fn: Any, run: Callable[[Any], Any]):
    """("ok", value) or ("error", exception) of run(fn); a None value or NotImplementedError means not attempted."""
    try:
        value = run(fn)
    except NotImplementedError:
        raise NotAttempted() from None
    except (NotAttempted, Fail):
        raise
    except Exception as e:  # noqa: BLE001 -- the learner's code may raise anything; it is part of the diagnosis
        return "error", e
    if value is None:
        raise NotAttempted()
    return "ok", value


def _close(a: Any, b: Any, tol: float = 1e-4) -> bool:
    try:
        a = torch.as_tensor(a).detach().double().cpu()
        b = torch.as_tensor(b).detach().double().cpu()
    except (TypeError, ValueError, RuntimeError):
        return False
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=tol, atol=tol))


def _clone(args: tuple) -> tuple:
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def call_with(*args) -> Callable[[Any], Any]:
    """A case that calls the answer with (fresh copies of) args, so an answer that edits its inputs harms nothing."""
    return lambda fn: fn(*_clone(args))


def compare(answer: Any, ex: Exercise, cases: list[tuple[str, Callable[[Any], Any]]], expect: str) -> None:
    """Run each case (label, run) on the answer and on the reference; on a mismatch raise Fail with the hint of the
    mistake that reproduces the answer (same numbers, or the same kind of exception), else a hint built from expect."""
    for label, run in cases:
        kind, got = _outcome(answer, run)
        expected = run(ex.reference)
        if kind == "ok" and _close(got, expected):
            continue
        for m in ex.mistakes:
            m_kind, m_got = _outcome(m.answer, run)
            if kind == m_kind == "error" and type(got) is type(m_got) and str(got) == str(m_got):
                raise Fail(m.hint)
            if kind == m_kind == "ok" and _close(got, m_got):
                raise Fail(m.hint)
        if kind == "error":
            raise Fail(f"your function raised {type(got).__name__} ({str(got)[:120]}) on {label}. {expect}")
        raise Fail(f"wrong values on {label}. {expect}")


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=gen, dtype=torch.float64).item()


def _randint(gen: torch.Generator, lo: int, hi: int) -> int:
    """An int in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (), generator=gen))


def random_schedule(gen: torch.Generator, T: int | None = None) -> NoiseSchedule:
    """A schedule with T (20–200) sorted random β in [1e-4, 0.05]: an answer hard-coded to T = 1000 fails."""
    T = T or _randint(gen, 20, 200)
    betas = (1e-4 + (0.05 - 1e-4) * torch.rand(T, generator=gen, dtype=torch.float64)).sort().values
    return NoiseSchedule(betas, name="random")


def _image(gen: torch.Generator, batch: int | None = None) -> torch.Tensor:
    b, c = batch or _randint(gen, 2, 4), _randint(gen, 1, 3)
    return torch.randn(b, c, _randint(gen, 2, 6), _randint(gen, 2, 6), generator=gen)


def _same_t(gen: torch.Generator, batch: int, T: int, index: int | None = None) -> torch.Tensor:
    """(B,) int64, one timestep index for the whole batch (index, or a random one)."""
    return torch.full((batch,), _randint(gen, 0, T - 1) if index is None else index, dtype=torch.long)


# ---------------------------------------------------------------------------------------------
# Notebook 01: the forward process
# ---------------------------------------------------------------------------------------------
def _q_sample_with(coef):
    def answer(x0, t, noise, schedule):
        a, b = coef(schedule, t)
        return a.reshape(-1, 1, 1, 1) * x0 + b.reshape(-1, 1, 1, 1) * noise
    return answer


def _check_q_sample(answer, gen, ex):
    lin = NoiseSchedule.linear(1000)
    ones, zeros = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    cases = [("the known case x_0 = 1, ε = 0, t = 499 (ᾱ = 0.078 under the linear schedule)",
              call_with(ones, torch.tensor([499, 499]), zeros, lin)),
             ("the known case x_0 = 0, ε = 1, t = 0 and 999", call_with(zeros, torch.tensor([0, 999]), ones, lin))]
    for _ in range(2):
        s, x0 = random_schedule(gen), _image(gen)
        t = torch.randint(0, s.T, (x0.shape[0],), generator=gen)
        t[0], t[-1] = 0, s.T - 1
        cases.append((f"random x_0 {tuple(x0.shape)} with T = {s.T}", call_with(x0, t, torch.randn_like(x0), s)))
    compare(answer, ex, cases,
            "x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε, with ᾱ_t = schedule.alpha_bars[t] shaped (B, 1, 1, 1).")


register(Exercise(
    1, "q_sample",
    "Write q_sample(x0, t, noise, schedule) -> x_t, the jump to step t (Eq. 4): x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε. "
    "x0, noise: (B, C, H, W); t: (B,) 0-based indices; use schedule.alpha_bars.",
    _check_q_sample,
    lambda x0, t, noise, schedule: q_sample(x0, t, noise, schedule),
    (Mistake("alpha_bar instead of its square root",
             _q_sample_with(lambda s, t: (s.alpha_bars[t], 1 - s.alpha_bars[t])),
             "you scaled by ᾱ_t and (1 − ᾱ_t); the scales are their square roots, √ᾱ_t and √(1 − ᾱ_t) "
             "(the variances ᾱ_t and 1 − ᾱ_t add up to 1, not the scales)"),
     Mistake("t off by one (t − 1)",
             _q_sample_with(lambda s, t: (s.alpha_bars[t - 1].sqrt(), (1 - s.alpha_bars[t - 1]).sqrt())),
             "off by one in t: t is already the 0-based index, so take alpha_bars[t] (index 0 is the report's t = 1), "
             "not alpha_bars[t − 1] or [t + 1]"),
     Mistake("t off by one (t + 1)",
             _q_sample_with(lambda s, t: (s.alpha_bars[t + 1].sqrt(), (1 - s.alpha_bars[t + 1]).sqrt())),
             "off by one in t: t is already the 0-based index, so take alpha_bars[t] (index 0 is the report's t = 1), "
             "not alpha_bars[t − 1] or [t + 1]"),
     Mistake("alpha (one step) instead of alpha_bar",
             _q_sample_with(lambda s, t: (s.alphas[t].sqrt(), (1 - s.alphas[t]).sqrt())),
             "you used α_t = 1 − β_t, the factor of one step; jumping from x_0 to x_t needs the product "
             "ᾱ_t = α_1 ⋯ α_t (schedule.alpha_bars)")),
))


def _check_alpha_bars(answer, gen, ex):
    cases = [("the known case β = (0.5, 0.5, 0.5) → ᾱ = (0.5, 0.25, 0.125)",
              call_with(torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)))]
    for _ in range(2):
        cases.append(("random β", call_with(random_schedule(gen).betas.double())))
    compare(answer, ex, cases, "ᾱ_t = ∏_{s ≤ t} (1 − β_s), one value per step, index 0 included.")


register(Exercise(
    1, "alpha_bars",
    "Write alpha_bars(betas) -> ᾱ, with ᾱ_t = ∏_{s ≤ t} (1 − β_s): betas (T,) → (T,).",
    _check_alpha_bars,
    lambda betas: torch.cumprod(1 - betas, dim=0),
    (Mistake("a sum instead of a product", lambda betas: 1 - torch.cumsum(betas, 0),
             "ᾱ_t is a product, ∏(1 − β_s) (torch.cumprod), not 1 − Σβ_s: the two agree only while Σβ is tiny"),
     Mistake("product of the betas", lambda betas: torch.cumprod(betas, 0),
             "multiply the α_s = 1 − β_s, not the β_s themselves"),
     Mistake("exclusive product (alpha_bars_prev)",
             lambda betas: torch.cat([torch.ones(1, dtype=betas.dtype), torch.cumprod(1 - betas, 0)[:-1]]),
             "ᾱ_t includes step t itself: index 0 holds 1 − β_0, not 1 (a product that stops before t is ᾱ_{t−1}, "
             "the schedule's alpha_bars_prev)")),
))


def _check_corr(answer, gen, ex):
    def case(ab, s):
        return call_with(torch.tensor(ab, dtype=torch.float64), torch.tensor(s, dtype=torch.float64))
    cases = [("the known case ᾱ = 1 (no noise yet): corr = 1", case(1.0, 0.5)),
             ("the known case ᾱ = 0.5, s = 1: corr = √0.5", case(0.5, 1.0))]
    for _ in range(3):
        ab, s = _uniform(gen, 0.05, 0.95), _uniform(gen, 0.2, 2.0)
        cases.append((f"ᾱ = {ab:.3f}, s = {s:.3f}", case(ab, s)))
    compare(answer, ex, cases, "corr = Cov(x_t, x_0) / (std x_t · std x_0), with Cov = √ᾱ s² and "
                               "Var x_t = ᾱ s² + 1 − ᾱ.")


register(Exercise(
    1, "corr_xt_x0",
    "Write corr_xt_x0(alpha_bar, s) -> the correlation of a pixel of x_t = √ᾱ x_0 + √(1 − ᾱ) ε with the same pixel "
    "of x_0, when x_0 has standard deviation s and ε ~ N(0, 1) is independent of it. (0-d tensors in, a number out.)",
    _check_corr,
    lambda ab, s: ab.sqrt() * s / (ab * s ** 2 + 1 - ab).sqrt(),
    (Mistake("sqrt(alpha_bar): the unit-variance case", lambda ab, s: ab.sqrt(),
             "√ᾱ is the correlation only when x_0 has unit variance: divide the covariance √ᾱ s² by both standard "
             "deviations, s and √(ᾱ s² + 1 − ᾱ)"),
     Mistake("the squared correlation", lambda ab, s: ab * s ** 2 / (ab * s ** 2 + 1 - ab),
             "that is the squared correlation (the fraction of x_t's variance that comes from x_0); take its square "
             "root"),
     Mistake("std of x_t without the noise", lambda ab, s: ab.sqrt() * s / (s ** 2 + 1 - ab).sqrt(),
             "the variance of x_t is ᾱ s² + (1 − ᾱ): the signal part is scaled by ᾱ too")),
))


# ---------------------------------------------------------------------------------------------
# Notebook 02: the time embedding
# ---------------------------------------------------------------------------------------------
def _embedding(t, dim, exponent=2, interleave=True, first="sin"):
    i = torch.arange(dim // 2, dtype=torch.float64)
    angles = t.double().reshape(-1, 1) / 10000 ** (exponent * i / dim)
    a, b = (angles.sin(), angles.cos()) if first == "sin" else (angles.cos(), angles.sin())
    if interleave:
        return torch.stack([a, b], dim=-1).reshape(len(t), dim)
    return torch.cat([a, b], dim=-1)


def _check_embedding(answer, gen, ex):
    cases = [("the known case t = 0, d = 4 → (0, 1, 0, 1)", call_with(torch.tensor([0]), 4)),
             ("the known case t = (1, 2), d = 2 → (sin t, cos t)", call_with(torch.tensor([1, 2]), 2))]
    for _ in range(2):
        dim = 2 * _randint(gen, 3, 32)
        cases.append((f"random t with d = {dim}", call_with(torch.randint(0, 1000, (5,), generator=gen), dim)))
    compare(answer, ex, cases, "e[2i] = sin(t / 10000^(2i/d)), e[2i+1] = cos(t / 10000^(2i/d)), i = 0 … d/2 − 1.")


register(Exercise(
    2, "sinusoidal_embedding",
    "Write sinusoidal_embedding(t, dim) -> (B, dim), the report's interleaved embedding: e[2i] = sin(t/10000^(2i/d)), "
    "e[2i+1] = cos(t/10000^(2i/d)). t: (B,) int64.",
    _check_embedding,
    lambda t, dim: sinusoidal_embedding(t, dim),
    (Mistake("concatenated [sin, cos]", lambda t, dim: _embedding(t, dim, interleave=False),
             "you concatenated [sin …, cos …] (most libraries do); the report interleaves them: e[2i] = sin, "
             "e[2i+1] = cos (stack sin and cos on a new last axis, then reshape to (B, d))"),
     Mistake("sin and cos swapped", lambda t, dim: _embedding(t, dim, first="cos"),
             "sin and cos are swapped: the even entries e[2i] are sin, the odd entries e[2i+1] are cos"),
     Mistake("exponent i/d", lambda t, dim: _embedding(t, dim, exponent=1),
             "the exponent is 2i/d, not i/d: i counts the sin–cos pairs (0 … d/2 − 1), so 2i/d runs from 0 to "
             "almost 1 and the slowest wave has a period of about 10000·2π")),
))


def _check_frequencies(answer, gen, ex):
    cases = [("the known case d = 2 → (1,)", call_with(2)), ("the known case d = 4 → (1, 0.01)", call_with(4))]
    for _ in range(2):
        dim = 2 * _randint(gen, 3, 64)
        cases.append((f"d = {dim}", call_with(dim)))
    compare(answer, ex, cases, "ω_i = 1 / 10000^(2i/d) for i = 0 … d/2 − 1 (d/2 values).")


register(Exercise(
    2, "embedding_frequencies",
    "Write embedding_frequencies(dim) -> (dim/2,), the angular frequency ω_i of each sin–cos pair, so that "
    "e[2i] = sin(ω_i t).",
    _check_frequencies,
    lambda dim: 1.0 / 10000 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim),
    (Mistake("the wavelength factor, not its reciprocal",
             lambda dim: 10000 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim),
             "that is the divisor 10000^(2i/d); the angle is t divided by it, so the frequency is its reciprocal, "
             "10000^(−2i/d)"),
     Mistake("exponent i/d", lambda dim: 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / dim),
             "the exponent is 2i/d (i = 0 … d/2 − 1), not i/d: the frequencies must fall from 1 to nearly 1/10000"),
     Mistake("one frequency per entry", lambda dim: 1.0 / 10000 ** (torch.arange(dim, dtype=torch.float64) / dim),
             "one frequency per sin–cos pair: d/2 of them, not d")),
))


def _check_time_mlp(answer, gen, ex):
    eye1, eye2 = nn.Linear(4, 4), nn.Linear(4, 4)
    for lin in (eye1, eye2):
        nn.init.eye_(lin.weight), nn.init.zeros_(lin.bias)
    cases = [("the known case of identity layers and e = (0, 1, −1, 2)",
              call_with(torch.tensor([[0.0, 1.0, -1.0, 2.0]]), eye1, eye2))]
    for _ in range(2):
        d, h = 2 * _randint(gen, 2, 16), _randint(gen, 4, 32)
        lin1, lin2 = nn.Linear(d, h), nn.Linear(h, h)
        for p in [*lin1.parameters(), *lin2.parameters()]:
            p.copy_(torch.randn(p.shape, generator=gen))
        cases.append((f"random layers {d} → {h} → {h}", call_with(torch.randn(3, d, generator=gen), lin1, lin2)))
    compare(answer, ex, cases, "the report's MLP is Linear → SiLU → Linear: lin2(silu(lin1(e))).")


register(Exercise(
    2, "time_mlp",
    "Write time_mlp(e, lin1, lin2) -> the learned time representation of the sinusoidal vector e (B, d), using the "
    "two given nn.Linear layers in the report's order (Linear → SiLU → Linear).",
    _check_time_mlp,
    lambda e, lin1, lin2: lin2(F.silu(lin1(e))),
    (Mistake("ReLU instead of SiLU", lambda e, lin1, lin2: lin2(F.relu(lin1(e))),
             "ReLU: the report's time MLP uses SiLU, x · sigmoid(x), which is smooth and lets small negative values "
             "through (F.silu)"),
     Mistake("no activation", lambda e, lin1, lin2: lin2(lin1(e)),
             "without the SiLU between them the two Linear layers collapse into a single linear map"),
     Mistake("an activation after the last Linear too", lambda e, lin1, lin2: F.silu(lin2(F.silu(lin1(e)))),
             "the SiLU sits only between the two Linear layers; the second Linear's output is used as it is (each "
             "block then applies its own activation and Linear)")),
))


# ---------------------------------------------------------------------------------------------
# Notebook 03: the U-Net
# ---------------------------------------------------------------------------------------------
def _report_unet(gen: torch.Generator) -> UNet:
    """A small U-Net of the report's kind (BatchNorm, ReLU, no attention), random weights from gen, eval mode."""
    model = UNet(UNetConfig(base_channels=4, depth=2, norm="batch", act="relu", time_dim=8))
    for p in model.parameters():
        p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _in_unet(model: UNet, x: torch.Tensor, t: torch.Tensor):
    def run(inject):
        with replace_time_injection(model, inject):
            return model(x, t)
    return run


def _check_time_injection(answer, gen, ex):
    block = DoubleConv(3, 4, 16, UNetConfig(norm="batch", act="relu"))
    for p in block.parameters():
        p.copy_(torch.randn(p.shape, generator=gen))
    h, temb = torch.randn(2, 4, 3, 5, generator=gen), torch.randn(2, 16, generator=gen)
    model = _report_unet(gen)
    x, t = torch.randn(2, 3, 8, 8, generator=gen), torch.randint(0, 1000, (2,), generator=gen)
    cases = [("one block, h (2, 4, 3, 5)", call_with(block, h, temb)),
             ("the whole U-Net (9 blocks, 3 depths)", _in_unet(model, x, t))]
    compare(answer, ex, cases, "add block.time_proj(temb), one value per channel, to h at every pixel: "
                               "h + block.time_proj(temb)[:, :, None, None].")


register(Exercise(
    3, "time_injection",
    "Write add_time(block, h, temb) -> the tensor the block's second convolution sees: the report adds the time "
    "embedding between the two convolutions. h: (B, C, H, W) after the first conv; temb: (B, T_dim); block.time_proj "
    "maps temb to C values. The checker runs it inside a real U-Net (unet.replace_time_injection).",
    _check_time_injection,
    lambda block, h, temb: h + block.time_proj(temb)[:, :, None, None],
    (Mistake("concatenated instead of added",
             lambda block, h, temb: torch.cat([h, block.time_proj(temb)[:, :, None, None].expand_as(h)], 1),
             "you concatenated the time embedding to h (2C channels); the report ADDS it: h + proj(temb), one shift "
             "per channel, so the block keeps C channels for its second convolution"),
     Mistake("not broadcast over H and W", lambda block, h, temb: h + block.time_proj(temb),
             "block.time_proj(temb) is (B, C): reshape it to (B, C, 1, 1) (e.g. [:, :, None, None]) so that it "
             "broadcasts over H and W"),
     Mistake("multiplied instead of added", lambda block, h, temb: h * block.time_proj(temb)[:, :, None, None],
             "you multiplied h by the projected embedding; the report adds it (a shift of each channel, not a scale)"),
     Mistake("the Linear without its activation",
             lambda block, h, temb: h + block.time_proj[1](temb)[:, :, None, None],
             "use the whole block.time_proj (its activation, then its Linear); you applied only the Linear")),
))


def _stage_shape(stage: str, c: int, h: int, w: int) -> tuple[int, int, int]:
    """Run the package's real Down / Up stage on zeros and read the shape (the reference of stage_shape)."""
    cfg = UNetConfig(norm="batch", act="relu")
    temb = torch.zeros(1, 4)
    if stage == "down":
        out = Down(c, 2 * c, 4, cfg).eval()(torch.zeros(1, c, h, w), temb)
    else:
        out = Up(c, c // 2, 4, cfg).eval()(torch.zeros(1, c, h, w), torch.zeros(1, c // 2, 2 * h, 2 * w), temb)
    return tuple(out.shape[1:])


def _check_stage_shape(answer, gen, ex):
    cases = [("the known case down, (8, 16, 16) → (16, 8, 8)", call_with("down", 8, 16, 16)),
             ("the known case up, (16, 8, 8) → (8, 16, 16)", call_with("up", 16, 8, 8))]
    for stage in ("down", "up", "down", "up"):
        c, h, w = 2 * _randint(gen, 1, 12), 2 * _randint(gen, 1, 8), 2 * _randint(gen, 1, 8)
        cases.append((f"{stage} with input ({c}, {h}, {w})", call_with(stage, c, h, w)))
    compare(answer, ex, cases, "down: MaxPool halves H, W, then the DoubleConv doubles C; up: the transposed conv "
                               "doubles H, W and halves C, the skip (C/2) is concatenated, the DoubleConv gives C/2.")


def _stage_mistake(down, up):
    return lambda stage, c, h, w: down(c, h, w) if stage == "down" else up(c, h, w)


register(Exercise(
    3, "stage_shape",
    "Write stage_shape(stage, c, h, w) -> (C, H, W) of the output of one U-Net stage of the package for an input "
    "(c, h, w): stage 'down' (MaxPool2d(2), then DoubleConv c → 2c) or 'up' (ConvTranspose2d c → c/2 with stride 2, "
    "concatenate the encoder's skip of c/2 channels, then DoubleConv → c/2).",
    _check_stage_shape,
    _stage_shape,
    (Mistake("down: the channels unchanged",
             _stage_mistake(lambda c, h, w: (c, h // 2, w // 2), lambda c, h, w: (c // 2, 2 * h, 2 * w)),
             "the MaxPool only halves H and W; the DoubleConv after it doubles the channels (C → 2C)"),
     Mistake("up: the concatenation's channels",
             _stage_mistake(lambda c, h, w: (2 * c, h // 2, w // 2), lambda c, h, w: (c, 2 * h, 2 * w)),
             "after the concatenation (C/2 upsampled + C/2 skip = C channels) the decoder's DoubleConv maps back down "
             "to C/2"),
     Mistake("up: no upsampling",
             _stage_mistake(lambda c, h, w: (2 * c, h // 2, w // 2), lambda c, h, w: (c // 2, h, w)),
             "the transposed convolution (kernel 2, stride 2) doubles H and W, to the size of the encoder's skip")),
))


def _attention(q, k, v, scale, dim=-1):
    return torch.softmax(q @ k.transpose(-2, -1) * scale, dim=dim) @ v


def _check_attention(answer, gen, ex):
    v = torch.randn(1, 4, 3, generator=gen)
    cases = [("the known case q = 0 (every weight 1/N: the mean of v)", call_with(torch.zeros(1, 2, 3),
                                                                                  torch.randn(1, 4, 3), v))]
    for _ in range(2):
        b, n, m, d = _randint(gen, 1, 3), _randint(gen, 2, 9), _randint(gen, 2, 9), _randint(gen, 4, 16)
        q, k = 2 * torch.randn(b, n, d, generator=gen), 2 * torch.randn(b, m, d, generator=gen)
        cases.append((f"random q {b, n, d}, k and v {b, m, d}", call_with(q, k, torch.randn(b, m, d, generator=gen))))
    compare(answer, ex, cases, "Attention(Q, K, V) = softmax(QKᵀ / √d) V, the softmax over the keys.")


register(Exercise(
    3, "attention",
    "Write attention(q, k, v) -> softmax(q kᵀ / √d) v, scaled dot-product attention. q: (B, N, d); k, v: (B, M, d) "
    "→ (B, N, d).",
    _check_attention,
    lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
    (Mistake("no scaling", lambda q, k, v: _attention(q, k, v, 1.0),
             "divide the scores QKᵀ by √d before the softmax: without it their spread grows with d and the softmax "
             "saturates"),
     Mistake("scaled by d", lambda q, k, v: _attention(q, k, v, 1 / q.shape[-1]),
             "the scale is 1/√d, not 1/d (q·k of unit-variance vectors has variance d, so √d makes it 1)"),
     Mistake("softmax over the queries", lambda q, k, v: _attention(q, k, v, q.shape[-1] ** -0.5, dim=-2),
             "take the softmax over the keys (the last axis of QKᵀ): each query's weights must sum to 1")),
))


# ---------------------------------------------------------------------------------------------
# Notebook 04: training
# ---------------------------------------------------------------------------------------------
def _toy_model(gen: torch.Generator, T: int):
    """A fixed random stand-in for ε_θ(x_t, t), cheap and smooth: tanh(a·x + b·t/T + c), per channel."""
    a, b, c = (torch.randn(1, 3, 1, 1, generator=gen) for _ in range(3))
    return lambda x, t: torch.tanh(a * x + b * t.float().reshape(-1, 1, 1, 1) / T + c)


def _loss_with(target="noise", reduce="mean", model_sees="xt"):
    def answer(model, x0, t, noise, schedule):
        xt = q_sample(x0, t, noise, schedule)
        pred = model(xt if model_sees == "xt" else x0, t)
        err = (pred - (noise if target == "noise" else x0)) ** 2
        return err.mean() if reduce == "mean" else err.flatten(1).sum(1).mean()
    return answer


def _check_loss(answer, gen, ex):
    lin = NoiseSchedule.linear(1000)
    zero_model = lambda x, t: torch.zeros_like(x)
    cases = [("the known case ε_θ = 0, ε = 2 → loss 4",
              call_with(zero_model, torch.randn(2, 3, 4, 4), torch.tensor([5, 900]), torch.full((2, 3, 4, 4), 2.0),
                        lin))]
    for _ in range(2):
        s = random_schedule(gen)
        x0 = torch.randn(_randint(gen, 2, 5), 3, _randint(gen, 2, 6), _randint(gen, 2, 6), generator=gen)
        t = torch.randint(0, s.T, (x0.shape[0],), generator=gen)
        cases.append((f"a random model and x_0 {tuple(x0.shape)}",
                      call_with(_toy_model(gen, s.T), x0, t, torch.randn(x0.shape, generator=gen), s)))
    compare(answer, ex, cases, "L = mean over batch and pixels of (ε − ε_θ(x_t, t))², x_t = q_sample(x0, t, ε).")


register(Exercise(
    4, "training_loss",
    "Write training_loss(model, x0, t, noise, schedule) -> the scalar L_simple (Eq. 14): noise x0 to x_t with the "
    "given t and noise, and compare the model's prediction model(x_t, t) with its target; average over batch and "
    "pixels.",
    _check_loss,
    _loss_with(),
    (Mistake("predicts x_0", _loss_with(target="x0"),
             "the network predicts the noise ε, so the target is noise, not x_0"),
     Mistake("mean over the batch only", _loss_with(reduce="batch"),
             "average over the pixels too (F.mse_loss's mean): a sum over C·H·W makes the loss, and the step size, "
             "grow with the image size"),
     Mistake("the model sees x_0", _loss_with(model_sees="x0"),
             "the network must see the noisy x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, not the clean x_0")),
))


def _check_timesteps(answer, gen, ex):
    T, batch = _randint(gen, 5, 20), 20000
    seed = _randint(gen, 0, 2 ** 30)
    kind, t = _outcome(answer, lambda fn: fn(batch, T, torch.Generator().manual_seed(seed)))
    if kind == "error":
        raise Fail(f"your function raised {type(t).__name__} ({str(t)[:120]}); draw with torch.randint(..., "
                   f"generator=generator)")
    t = torch.as_tensor(t)
    if t.is_floating_point():
        raise Fail(ex.mistakes[2].hint)
    if tuple(t.shape) != (batch,):
        raise Fail(f"expected shape ({batch},) for batch = {batch}, got {tuple(t.shape)}")
    lo, hi = int(t.min()), int(t.max())
    if lo == 1 and hi == T:
        raise Fail(ex.mistakes[0].hint)
    if lo == 0 and hi == T - 2:
        raise Fail(ex.mistakes[1].hint)
    if lo != 0 or hi != T - 1:
        raise Fail(f"with T = {T} your draws run from {lo} to {hi}; they must cover 0 … T − 1 = {T - 1}")
    counts = torch.bincount(t, minlength=T).double()
    expect = batch / T
    chi2 = float(((counts - expect) ** 2 / expect).sum())
    if chi2 > T - 1 + 6 * math.sqrt(2 * (T - 1)) + 10:      # ~6 standard deviations above the mean of χ²(T − 1)
        raise Fail(f"the draws are not uniform over 0 … {T - 1} (counts {counts.long().tolist()})")
    again = answer(batch, T, torch.Generator().manual_seed(seed))
    if not torch.equal(torch.as_tensor(again), t):
        raise Fail("draw with the generator you are given (torch.randint(…, generator=generator)), so that the same "
                   "seed gives the same timesteps")


register(Exercise(
    4, "sample_timesteps",
    "Write sample_timesteps(batch, T, generator) -> (batch,) int64 timestep indices for training, uniform over every "
    "step the sampler will visit. Use the generator.",
    _check_timesteps,
    lambda batch, T, generator: torch.randint(0, T, (batch,), generator=generator),
    (Mistake("1 … T", lambda batch, T, generator: torch.randint(1, T + 1, (batch,), generator=generator),
             "you drew 1 … T, the report's numbering; the package's t is the 0-based index 0 … T − 1 (index T does "
             "not exist, and index 0, the report's t = 1, would never be trained)"),
     Mistake("0 … T − 2", lambda batch, T, generator: torch.randint(0, T - 1, (batch,), generator=generator),
             "torch.randint's upper bound is exclusive: randint(0, T − 1) never draws T − 1, so the pure-noise step "
             "is never trained; use randint(0, T)"),
     Mistake("floats", lambda batch, T, generator: torch.rand(batch, generator=generator) * T,
             "timesteps are integers (int64) that index the schedule: use torch.randint")),
))


def _check_snr(answer, gen, ex):
    cases = [("the known case ᾱ = (0.5, 0.8) → (1, 4)", call_with(torch.tensor([0.5, 0.8], dtype=torch.float64)))]
    for _ in range(2):
        cases.append(("a random schedule's ᾱ", call_with(random_schedule(gen).alpha_bars.double())))
    compare(answer, ex, cases, "SNR_t = ᾱ_t / (1 − ᾱ_t): the signal's variance over the noise's.")


register(Exercise(
    4, "snr",
    "Write snr(alpha_bars) -> the signal-to-noise ratio of x_t at each step (a ratio of variances): (T,) → (T,).",
    _check_snr,
    lambda ab: ab / (1 - ab),
    (Mistake("ratio of the scales", lambda ab: ab.sqrt() / (1 - ab).sqrt(),
             "that is the ratio of the scales √ᾱ / √(1 − ᾱ); the SNR is a ratio of variances, ᾱ / (1 − ᾱ)"),
     Mistake("noise over signal", lambda ab: (1 - ab) / ab,
             "upside down: the signal's variance ᾱ goes on top, the noise's 1 − ᾱ below"),
     Mistake("signal over total", lambda ab: ab,
             "ᾱ is the signal's share of the total variance (which is 1); the SNR divides it by the noise's "
             "share, 1 − ᾱ")),
))


# ---------------------------------------------------------------------------------------------
# Notebook 05: sampling
# ---------------------------------------------------------------------------------------------
def _p_sample_with(sigma="beta", last_noise=False, sqrt_coef=True):
    def answer(model, xt, t, schedule, z):
        eps = model(xt, t)
        i = int(t[0])
        alpha, ab, beta = schedule.alphas[i], schedule.alpha_bars[i], schedule.betas[i]
        coef = beta / ((1 - ab).sqrt() if sqrt_coef else (1 - ab))
        mean = (xt - coef * eps) / alpha.sqrt()
        s = beta.sqrt() if sigma == "beta" else schedule.posterior_variance[i].sqrt()
        return mean + s * z if (i > 0 or last_noise) else mean
    return answer


def _check_p_sample(answer, gen, ex):
    s = random_schedule(gen)
    oracle = GaussianOracle(s, mu=_uniform(gen, -0.5, 0.5), s=_uniform(gen, 0.1, 0.5))
    cases = []
    for index, what in ((1, "index 1"), (None, "a random index"), (s.T - 1, "index T − 1"), (0, "index 0")):
        xt = _image(gen)
        t = _same_t(gen, xt.shape[0], s.T, index)
        cases.append((f"{what} (t = {int(t[0])}, T = {s.T})", call_with(oracle, xt, t, s, torch.randn_like(xt))))
    compare(answer, ex, cases, "x_{t−1} = (x_t − β_t/√(1 − ᾱ_t) · ε_θ(x_t, t)) / √α_t + σ_t z, σ_t = √β_t, no z at "
                               "index 0.")


register(Exercise(
    5, "p_sample_step",
    "Write p_sample_step(model, xt, t, schedule, z) -> x_{t−1}, the report's reverse step (Algorithm 2, line 4) with "
    "σ_t = √β_t and no noise at the last step (index 0). t: (B,) with one index for the whole batch; z: the noise.",
    _check_p_sample,
    lambda model, xt, t, schedule, z: p_sample(model, xt, t, schedule, noise=z),
    (Mistake("sigma = sqrt(posterior variance)", _p_sample_with(sigma="posterior"),
             "σ_t = √β̃_t is Ho et al.'s other choice; the report samples with σ_t = √β_t (schedule.betas[t].sqrt())"),
     Mistake("noise at the last step", _p_sample_with(last_noise=True),
             "no noise at the last step: at index 0 (the report's t = 1) x_{t−1} is the mean alone (z = 0)"),
     Mistake("(1 - alpha) / (1 - alpha_bar)", _p_sample_with(sqrt_coef=False),
             "the ε coefficient is β_t / √(1 − ᾱ_t) = (1 − α_t)/√(1 − ᾱ_t): you dropped the square root")),
))


def _posterior_with(prev=True, swap=False, sqrt_prev=True):
    def answer(x0, xt, t, schedule):
        i = int(t[0])
        beta, alpha, ab = schedule.betas[i], schedule.alphas[i], schedule.alpha_bars[i]
        ab_prev = schedule.alpha_bars_prev[i] if prev else ab
        c1 = beta * (ab_prev.sqrt() if sqrt_prev else ab_prev) / (1 - ab)
        c2 = alpha.sqrt() * (1 - ab_prev) / (1 - ab)
        return c2 * x0 + c1 * xt if swap else c1 * x0 + c2 * xt
    return answer


def _check_posterior(answer, gen, ex):
    s = random_schedule(gen)
    cases = []
    for index, what in ((None, "a random index"), (s.T - 1, "index T − 1"), (1, "index 1")):
        x0 = _image(gen)
        t = _same_t(gen, x0.shape[0], s.T, index)
        cases.append((f"{what} (t = {int(t[0])}, T = {s.T})", call_with(x0, q_sample(x0, t, torch.randn_like(x0), s),
                                                                        t, s)))
    compare(answer, ex, cases, "μ̃ = β_t √ᾱ_{t−1} / (1 − ᾱ_t) · x_0 + √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · x_t "
                               "(ᾱ_{t−1} = schedule.alpha_bars_prev[t]).")


register(Exercise(
    5, "posterior_mean",
    "Write posterior_mean(x0, xt, t, schedule) -> μ̃_t(x_t, x_0), the mean of q(x_{t−1} | x_t, x_0) (Ho et al. "
    "Eq. 7): β_t √ᾱ_{t−1}/(1 − ᾱ_t) · x_0 + √α_t (1 − ᾱ_{t−1})/(1 − ᾱ_t) · x_t. t: (B,), one index for the batch.",
    _check_posterior,
    lambda x0, xt, t, schedule: q_posterior_mean(x0, xt, t, schedule),
    (Mistake("alpha_bar_t for alpha_bar_{t-1}", _posterior_with(prev=False),
             "the posterior looks one step back: use ᾱ_{t−1} (schedule.alpha_bars_prev[t], 1 at index 0) where you "
             "used ᾱ_t, in both coefficients' (1 − ᾱ_{t−1}) and √ᾱ_{t−1}"),
     Mistake("coefficients swapped", _posterior_with(swap=True),
             "the coefficients are swapped: β_t √ᾱ_{t−1}/(1 − ᾱ_t) multiplies x_0, √α_t (1 − ᾱ_{t−1})/(1 − ᾱ_t) "
             "multiplies x_t"),
     Mistake("alpha_bar_{t-1} without its square root", _posterior_with(sqrt_prev=False),
             "x_0's coefficient has √ᾱ_{t−1}, the square root (x_{t−1} = √ᾱ_{t−1} x_0 + noise)")),
))


SAMPLER_T = 50


def sampler_schedule() -> NoiseSchedule:
    """The short schedule the sampler exercise uses: T = 50, β linear 0.02 → 0.2 (ᾱ_T ≈ 0.003). Its large first β
    makes the mistakes visible: the noise of the last step (√β_0 = 0.14) and √β̃ against √β."""
    return NoiseSchedule.linear(SAMPLER_T, 0.02, 0.2)


def sampler_moments(schedule: NoiseSchedule, mu: float, s: float, variance: str = "beta", last_noise: bool = False,
                    stop: int = 0) -> tuple[float, float]:
    """Exact mean and std of x_0 from the DDPM sampler with the Gaussian oracle, before the clamp.

    With ε(x) = c_t (x − √ᾱ_t μ), c_t = √(1 − ᾱ_t)/(ᾱ_t s² + 1 − ᾱ_t), each step is linear:
    x_{t−1} = A_t x_t + B_t + σ_t z, so m ← A m + B, v ← A² v + σ², starting from x_T ~ N(0, 1).
    variance: "beta" (σ = √β) or "posterior" (σ = √β̃); last_noise adds σ z at index 0 too; stop > 0 stops early.
    """
    m, v = 0.0, 1.0
    sig = schedule.sigmas(variance).double()
    for i in range(schedule.T - 1, stop - 1, -1):
        ab, beta, alpha = (schedule.alpha_bars[i].double(), schedule.betas[i].double(), schedule.alphas[i].double())
        c = (1 - ab).sqrt() / (ab * s ** 2 + 1 - ab)
        k = beta / (1 - ab).sqrt()
        A, B = (1 - k * c) / alpha.sqrt(), k * c * ab.sqrt() * mu / alpha.sqrt()
        m = float(A * m + B)
        v = float(A ** 2 * v + (sig[i] ** 2 if (i > 0 or last_noise) else 0.0))
    return m, math.sqrt(v)


def _ks_below(x: torch.Tensor, m: float, sd: float, upper: float = 1.0) -> float:
    """Largest gap between the empirical CDF of x and N(m, sd²)'s, over the points below upper (the clamp)."""
    xs = x.flatten().double().sort().values
    n = len(xs)
    inside = xs < upper
    emp = torch.arange(1, n + 1, dtype=torch.float64) / n
    normal = 0.5 * (1 + torch.erf((xs - m) / (sd * math.sqrt(2))))
    gap = (emp - normal).abs()[inside]
    return float(gap.max()) if len(gap) else 1.0


def _ddpm_loop(variance="beta", last_noise=False, clamp=True, stop=0):
    def answer(model, shape, schedule, generator):
        x = torch.randn(shape, generator=generator)
        for i in range(schedule.T - 1, stop - 1, -1):
            t = torch.full((shape[0],), i, dtype=torch.long)
            z = torch.randn(shape, generator=generator)
            eps = model(x, t)
            mean = (x - schedule.betas[i] / schedule.sqrt_one_minus_alpha_bars[i] * eps) / schedule.alphas[i].sqrt()
            x = mean + (schedule.sigmas(variance)[i] * z if (i > 0 or last_noise) else 0)
        return x.clamp(-1, 1) if clamp else x
    return answer


def _check_sampler(answer, gen, ex):
    s = sampler_schedule()
    mu, sd = _uniform(gen, 0.6, 0.85), _uniform(gen, 0.15, 0.2)
    oracle = GaussianOracle(s, mu=mu, s=sd)
    shape = (_randint(gen, 24, 32), 1, 32, 32)
    kind, x = _outcome(answer, lambda fn: fn(oracle, shape, s, gen))
    if kind == "error":
        raise Fail(f"your sampler raised {type(x).__name__} ({str(x)[:120]}); loop i = T − 1 … 0 with "
                   f"t = torch.full((B,), i) and call model(x, t)")
    x = torch.as_tensor(x)
    if tuple(x.shape) != shape:
        raise Fail(f"expected samples shaped {shape}, got {tuple(x.shape)}")
    visited = [int(c[0]) for c in oracle.calls]
    if visited and visited[0] < visited[-1]:
        raise Fail("your loop runs forward in time: start at index T − 1 (pure noise) and go down to 0")
    if visited == list(range(s.T - 1, 0, -1)):
        raise Fail(ex.mistakes[2].hint)
    if visited != list(range(s.T - 1, -1, -1)):
        raise Fail(f"the model should be called once per step at indices T − 1 … 0 ({s.T} calls); your sampler made "
                   f"{len(visited)} calls starting {visited[:3]}")
    if float(x.max()) > 1 or float(x.min()) < -1:
        raise Fail(ex.mistakes[3].hint)
    tol = 0.018   # a KS gap of 0.018 over ≥ 24k samples: a correct sampler fails with probability < 1e-6; each
    #               mistake's distribution lies ≥ 0.05 away from the right one (tests/test_exercises.py)
    candidates = [(None, sampler_moments(s, mu, sd)),
                  (ex.mistakes[0].hint, sampler_moments(s, mu, sd, variance="posterior")),
                  (ex.mistakes[1].hint, sampler_moments(s, mu, sd, last_noise=True))]
    gaps = [(_ks_below(x, m, v), hint) for hint, (m, v) in candidates]
    if gaps[0][0] <= tol:
        return
    best_gap, best_hint = min(gaps[1:], key=lambda g: g[0])
    if best_gap <= tol:
        raise Fail(best_hint)
    m, v = candidates[0][1]
    raise Fail(f"your samples (mean {float(x.mean()):.3f}, std {float(x.std()):.3f}) do not follow the report's "
               f"sampler (before the clamp N({m:.3f}, {v:.3f}²), for data N({mu:.3f}, {sd:.3f}²)): check the mean of "
               f"each step and σ_t = √β_t")


register(Exercise(
    5, "ddpm_sampler",
    "Write ddpm_sampler(model, shape, schedule, generator) -> x_0: the report's sampler (Algorithm 2) from "
    "x_T ~ N(0, I), one reverse step per index T − 1 … 0 (σ_t = √β_t, no noise at index 0), the result clamped to "
    "[−1, 1]. Draw all noise with the generator. The checker runs it with the Gaussian oracle (data N(μ, s²)).",
    _check_sampler,
    _ddpm_loop(),
    (Mistake("sigma = sqrt(posterior variance)", _ddpm_loop(variance="posterior"),
             "your samples match σ_t = √β̃_t (the posterior variance); the report samples with σ_t = √β_t"),
     Mistake("noise at the last step", _ddpm_loop(last_noise=True),
             "your samples carry the noise of the last step too: at index 0 (the report's t = 1) add no noise"),
     Mistake("stops before index 0", _ddpm_loop(stop=1),
             "your loop stops before index 0 (the report's t = 1): range(T − 1, −1, −1) visits T − 1 … 0"),
     Mistake("no clamp", _ddpm_loop(clamp=False),
             "some samples lie outside [−1, 1]: the report's sampler clamps x_0 to the image range at the end "
             "(x.clamp(−1, 1))")),
))


def _ddim_with(prev="shifted", direction="prev", use_x0=True):
    def answer(xt, t, t_prev, eps, schedule):
        i, j = int(t[0]), int(t_prev[0])
        ab = schedule.alpha_bars[i]
        ab_prev = (schedule.alpha_bars[j] if j >= 0 else torch.tensor(1.0)) if prev == "shifted" \
            else schedule.alpha_bars[j]
        x0 = (xt - (1 - ab).sqrt() * eps) / ab.sqrt() if use_x0 else xt
        return ab_prev.sqrt() * x0 + (1 - (ab_prev if direction == "prev" else ab)).sqrt() * eps
    return answer


def _check_ddim(answer, gen, ex):
    s = random_schedule(gen)
    cases = []
    for i, j, what in ((None, None, "a random pair"), (None, -1, "the last step (t_prev = −1, ᾱ_prev = 1)"),
                       (s.T - 1, None, "the first step from index T − 1")):
        xt = _image(gen)
        t = _same_t(gen, xt.shape[0], s.T, i)
        t_prev = torch.full_like(t, _randint(gen, 0, int(t[0]) - 1) if j is None and t[0] > 0 else -1)
        cases.append((f"{what} (t = {int(t[0])}, t_prev = {int(t_prev[0])})",
                      call_with(xt, t, t_prev, torch.randn_like(xt), s)))
    compare(answer, ex, cases, "x_prev = √ᾱ_prev · x̂_0 + √(1 − ᾱ_prev) · ε with x̂_0 = (x_t − √(1 − ᾱ_t) ε)/√ᾱ_t, "
                               "ᾱ_prev = 1 when t_prev = −1.")


register(Exercise(
    5, "ddim_step",
    "Write ddim_step(xt, t, t_prev, eps, schedule) -> x_{t_prev}, the deterministic DDIM update (η = 0, Song et al. "
    "Eq. 12): predict x̂_0 from x_t and ε, then move it to t_prev. t, t_prev: (B,), one index each for the whole "
    "batch; t_prev = −1 means the clean image (ᾱ = 1).",
    _check_ddim,
    lambda xt, t, t_prev, eps, schedule: ddim_step(xt, t, t_prev, eps, schedule)[0],
    (Mistake("alpha_bars[-1] for t_prev = -1", _ddim_with(prev="index"),
             "t_prev = −1 means ᾱ_prev = 1 (the clean image); alpha_bars[−1] is the last entry, ᾱ at T − 1"),
     Mistake("direction with alpha_bar_t", _ddim_with(direction="t"),
             "the direction term points to x_{t_prev}: √(1 − ᾱ_prev) · ε, not √(1 − ᾱ_t) · ε"),
     Mistake("x_t instead of the predicted x_0", _ddim_with(use_x0=False),
             "first predict x̂_0 = (x_t − √(1 − ᾱ_t) ε)/√ᾱ_t, then scale that (not x_t) by √ᾱ_prev")),
))


# ---------------------------------------------------------------------------------------------
# Notebook 06: what matters (the levers of the ablation and how to read its verdicts)
# ---------------------------------------------------------------------------------------------
def _min_snr_with(snr="variance", clamp="min", divide=True):
    def answer(t, schedule, gamma):
        ab = schedule.alpha_bars[t].double()
        ratio = ab / (1 - ab) if snr == "variance" else ab.sqrt() / (1 - ab).sqrt()
        capped = ratio.clamp(max=gamma) if clamp == "min" else ratio.clamp(min=gamma)
        return capped / ratio if divide else capped
    return answer


def _check_min_snr(answer, gen, ex):
    cases = [("the known case: linear schedule, t = 0, 100, 300, 999, γ = 5 (SNR ≈ 1e4, 9, 0.7, 4e-5)",
              call_with(torch.tensor([0, 100, 300, 999]), NoiseSchedule.linear(1000), 5.0))]
    for _ in range(2):
        s = random_schedule(gen)
        t = torch.randint(0, s.T, (_randint(gen, 4, 8),), generator=gen)
        cases.append((f"a random schedule (T = {s.T})", call_with(t, s, _uniform(gen, 1.0, 10.0))))
    compare(answer, ex, cases, "w_t = min(SNR_t, γ) / SNR_t with SNR_t = ᾱ_t / (1 − ᾱ_t): 1 where SNR_t ≤ γ.")


register(Exercise(
    6, "min_snr_weight",
    "Write min_snr_weight(t, schedule, gamma) -> (B,), the Min-SNR-γ loss weight of the ε-loss (Hang et al. 2023): "
    "w_t = min(SNR_t, γ) / SNR_t, SNR_t = ᾱ_t / (1 − ᾱ_t). t: (B,) 0-based indices.",
    _check_min_snr,
    lambda t, schedule, gamma: min_snr_weight(t, schedule, gamma),
    (Mistake("max instead of min", _min_snr_with(clamp="max"),
             "the weight caps the SNR at γ: min(SNR_t, γ), so w_t ≤ 1 (max(SNR_t, γ) would boost the noisy steps)"),
     Mistake("min(SNR, γ) not divided by SNR", _min_snr_with(divide=False),
             "divide by SNR_t: min(SNR_t, γ) alone is the weight of an x_0-prediction loss; for the ε-loss "
             "the weight is min(SNR_t, γ) / SNR_t"),
     Mistake("SNR as a ratio of scales", _min_snr_with(snr="scale"),
             "SNR_t is a ratio of variances, ᾱ_t / (1 − ᾱ_t), not of the scales √ᾱ_t / √(1 − ᾱ_t)")),
))


def _perturbed_with(where="noise", power=1, renormalise=False):
    def answer(x0, t, noise, xi, delta, schedule):
        if where == "after":
            return q_sample(x0, t, noise, schedule) + delta * xi
        eps = noise + delta ** power * xi
        return q_sample(x0, t, eps / math.sqrt(1 + delta ** 2) if renormalise else eps, schedule)
    return answer


def _check_perturbed(answer, gen, ex):
    lin = NoiseSchedule.linear(1000)
    zeros, ones = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    cases = [("the known case x_0 = 0, ε = 0, ξ = 1, δ = 0.5, t = 499 (√(1 − ᾱ) = 0.96)",
              call_with(zeros, torch.tensor([499, 499]), zeros, ones, 0.5, lin))]
    for _ in range(2):
        s, x0 = random_schedule(gen), _image(gen)
        t = torch.randint(0, s.T, (x0.shape[0],), generator=gen)
        cases.append((f"random x_0 {tuple(x0.shape)}, T = {s.T}",
                      call_with(x0, t, torch.randn(x0.shape, generator=gen), torch.randn(x0.shape, generator=gen),
                                _uniform(gen, 0.05, 0.5), s)))
    compare(answer, ex, cases, "x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · (ε + δ · ξ).")


register(Exercise(
    6, "perturbed_xt",
    "Write perturbed_xt(x0, t, noise, xi, delta, schedule) -> the x_t that input perturbation trains on (Ning et al. "
    "2023): x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) (ε + δ ξ); the target stays ε. x0, noise, xi: (B, C, H, W); t: (B,).",
    _check_perturbed,
    lambda x0, t, noise, xi, delta, schedule: q_sample(x0, t, perturbed_noise(noise, xi, delta), schedule),
    (Mistake("perturbation added after the scaling", _perturbed_with(where="after"),
             "perturb the noise before it is scaled: ε + δ ξ goes inside √(1 − ᾱ_t) (…), so the perturbation "
             "shrinks with the noise near the clean end"),
     Mistake("delta squared", _perturbed_with(power=2),
             "δ scales ξ (δ · ξ has standard deviation δ): it is a scale, not a variance, so do not square it"),
     Mistake("renormalised noise", _perturbed_with(renormalise=True),
             "do not renormalise ε + δ ξ to unit variance: the perturbed input is meant to be slightly noisier "
             "than the forward process gives, as the sampler's own errors make it")),
))


def _verdict_with(sign=1, bound="max"):
    def answer(base, variant):
        diff = sign * (sum(variant) / len(variant) - sum(base) / len(base))
        spreads = (max(base) - min(base), max(variant) - min(variant))
        limit = {"max": max(spreads), "min": min(spreads), "none": 0.0}[bound]
        return "no measurable effect" if abs(diff) <= limit else ("better" if diff < 0 else "worse")
    return answer


def _check_verdict(answer, gen, ex):
    cases = [("base [30, 32], variant [27, 28]", [30.0, 32.0], [27.0, 28.0]),
             ("base [30, 30.5], variant [30.2, 30.4]", [30.0, 30.5], [30.2, 30.4]),
             ("base [30, 34], variant [29.5, 30.5]", [30.0, 34.0], [29.5, 30.5])]
    for _ in range(3):
        base = [round(_uniform(gen, 20, 40), 2) for _ in range(_randint(gen, 2, 4))]
        variant = [round(_uniform(gen, 20, 40), 2) for _ in range(_randint(gen, 2, 4))]
        cases.append((f"base {base}, variant {variant}", base, variant))
    for label, base, variant in cases:
        kind, got = _outcome(answer, call_with(list(base), list(variant)))
        expected = ex.reference(base, variant)
        if kind == "ok" and isinstance(got, str) and got.strip().lower() == expected:
            continue
        for m in ex.mistakes:
            if kind == "ok" and isinstance(got, str) and got.strip().lower() == m.answer(base, variant):
                raise Fail(m.hint)
        if kind == "error":
            raise Fail(f"your function raised {type(got).__name__} ({str(got)[:120]}) on {label}")
        raise Fail(f"on {label} the verdict is {expected!r}, you said {got!r}: compare the difference of the mean "
                   "SWDs with the larger of the two seed spreads (max − min); lower SWD is better")


register(Exercise(
    6, "ablation_verdict",
    "Write verdict(base, variant) -> 'better', 'worse' or 'no measurable effect': base and variant are the SWDs of "
    "their seeds (lists, lower is better). The protocol claims an effect only when the difference of the means "
    "exceeds the larger of the two seed spreads (max − min).",
    _check_verdict,
    _verdict_with(),
    (Mistake("higher SWD read as better", _verdict_with(sign=-1),
             "SWD is a distance to the real faces: a LOWER SWD is better, so a variant below base is 'better'"),
     Mistake("the smaller spread", _verdict_with(bound="min"),
             "compare the difference with the LARGER of the two seed spreads: the smaller one lets seed noise "
             "pass for an effect"),
     Mistake("no spread at all", _verdict_with(bound="none"),
             "any two runs differ a little: the difference must exceed the seed spread (max − min over seeds) "
             "before it counts as an effect, else the verdict is 'no measurable effect'")),
))
