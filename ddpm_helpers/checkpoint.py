"""Checkpoints: one file per save, written atomically, loadable into a model for sampling.

A training checkpoint is a dict with keys: ``format`` ("ddpm_helpers/1"), ``config`` (the
TrainConfig as a nested dict), ``model``, ``ema`` (EMA weights, a state dict of the bare U-Net),
``ema_updates``, ``optimizer``, ``lr_schedule``, ``scaler``, ``step``, ``epoch``, ``batch_in_epoch``,
``rng`` (rank 0's), ``per_rank`` (every rank's RNG under DDP, else None), ``world_size``,
``sample_noise``, ``bad_steps``, ``elapsed``, ``data`` (a description), ``data_identity`` (what the run
trained on: source, split, count, crop, size, channels, fingerprint; absent in older checkpoints) and
``parameters``. :mod:`ddpm_helpers.state` builds that dict from a Trainer and puts a Trainer back from it;
this module writes, finds, reads and checks the files.

Every file is read without a full unpickle (issue 20): ``torch.load(..., weights_only=True)`` builds only
tensors, numbers, strings and plain containers, so a checkpoint made by someone else (a Kaggle dataset, a
download) cannot run code. Checkpoints hold only those (the RNG states as tensors); those written before
issue 20 also hold NumPy's RNG state as an ndarray, for which NumPy's array constructor is allowed (torch ≥ 2.4).
An exported model (``*.safetensors``, see :mod:`ddpm_helpers.export`) is read here too, as a sampling-only
checkpoint, so every loader (sample, figures, evaluate, notebook 05) takes it as it takes a ``.pt``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import pickle
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open

from . import files
from ._types import PathLike, moved_names
from .config import DataConfig, DiffusionConfig, TrainConfig, UNetConfig
from .errors import DDPMError
from .files import atomic_save, free_space
from .schedule import NoiseSchedule
from .unet import UNet

# Names that lived here before issue 19 (file helpers moved to files): see moved_names.
__getattr__ = moved_names(__name__, {"atomic_open": files})

FORMAT = "ddpm_helpers/1"
# atomic_open's temporary files: ".<name>.<8 random characters>.tmp" beside the target (tempfile.mkstemp)
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


class CheckpointError(DDPMError, ValueError):
    """A checkpoint that cannot be used: unreadable, of another format, or from an incompatible config."""


class DataChangedError(CheckpointError):
    """The checkpoint to resume was trained on other data than this run would use."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, permission, read-only file system)."""


def save_checkpoint_file(obj: Any, path: PathLike) -> Path:
    """atomic_save for a run's checkpoint; an OS error (no space, permission) becomes a CheckpointWriteError
    saying that this checkpoint was not written, which earlier one is intact, and how much space is free."""
    path = Path(path)
    try:
        return atomic_save(obj, path)
    except OSError as e:
        previous = [p for p in list_checkpoints(path.parent) if p != path]
        kept = f"the previous checkpoint, {previous[-1]}, is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointWriteError(f"checkpoint {path} was not written: {e.strerror or e} "
                                   f"({free_space(path.parent)}); {kept}. "
                                   "Free some space (or fix the folder's permissions) and resume with --resume."
                                   ) from e


def leftover_temp_files(folder: PathLike) -> List[Path]:
    """Temporary files of atomic_open writes that were killed (SIGKILL, power loss) in a folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _TEMP_NAME.fullmatch(p.name) and p.is_file())


def remove_leftover_temp_files(folder: PathLike) -> Tuple[int, int]:
    """Delete the temporary files of killed writes in folder; return (count, bytes). Call it only while no
    other process writes there (the trainer does, holding the run-folder lock)."""
    count = size = 0
    for p in leftover_temp_files(folder):
        with contextlib.suppress(OSError):
            n = p.stat().st_size
            p.unlink()
            count, size = count + 1, size + n
    return count, size


def config_to_dict(cfg: TrainConfig) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(d: Dict[str, Any]) -> TrainConfig:
    """Rebuild a TrainConfig from its dict form (unknown keys are ignored, lists become tuples)."""
    def build(cls, values):
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in names}
        return cls(**kwargs)
    d = dict(d)
    return build(TrainConfig, {**d, "model": build(UNetConfig, d.get("model", {})),
                               "diffusion": build(DiffusionConfig, d.get("diffusion", {})),
                               "data": build(DataConfig, d.get("data", {}))})


def checkpoint_name(step: int) -> str:
    return f"ckpt_{step:08d}.pt"


def list_checkpoints(folder: PathLike) -> List[Path]:
    """Checkpoints in a run folder (``ckpt_XXXXXXXX.pt``), oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("ckpt_*.pt") if re.fullmatch(r"ckpt_\d{8}\.pt", p.name))


def latest_checkpoint(path: PathLike, max_depth: int = 5) -> Optional[Path]:
    """An explicit checkpoint file, or the newest checkpoint of the run in a folder; None if there is none.

    A folder without checkpoints of its own is searched up to max_depth levels down (a previous Kaggle
    version's output under /kaggle/input/... works; CelebA's 200,000 images are never walked). If that
    finds several run folders, it refuses (CheckpointError) rather than guess between runs.
    """
    path = Path(path)
    if path.is_file():
        return path
    own = list_checkpoints(path)
    if own:
        return own[-1]
    runs: Dict[Path, List[Path]] = {}
    for p in _checkpoints_below(path, "*", max_depth):
        runs.setdefault(p.parent, []).append(p)
    if len(runs) > 1:
        raise CheckpointError(f"{path} holds checkpoints of {len(runs)} runs: "
                              + ", ".join(str(r) for r in sorted(runs)) + "; pass the one to use")
    return max(next(iter(runs.values())), key=checkpoint_step) if runs else None


def _checkpoints_below(root: Path, run_name: str, max_depth: int) -> List[Path]:
    """ckpt_XXXXXXXX.pt files in folders named run_name (a glob) 1 … max_depth levels below root."""
    if not root.is_dir():
        return []
    found = {p for depth in range(max_depth) for p in root.glob("*/" * depth + f"{run_name}/ckpt_*.pt")
             if re.fullmatch(r"ckpt_\d{8}\.pt", p.name)}
    return sorted(found, key=checkpoint_step)


def prune_checkpoints(folder: PathLike, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)


# What the weights-only unpickler may build beyond tensors and plain containers: NumPy's RNG state (an ndarray of
# uint32) as checkpoints written before issue 20 hold it. Named both ways: a file written under NumPy 1
# ("numpy.core") and read under NumPy 2 ("numpy._core"), or the reverse.
_RECONSTRUCT = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
OLD_RNG_GLOBALS = [_RECONSTRUCT, np.ndarray, np.dtype, type(np.dtype(np.uint32)),
                   (_RECONSTRUCT, "numpy.core.multiarray._reconstruct"),
                   (_RECONSTRUCT, "numpy._core.multiarray._reconstruct")]


def _allowed_globals():
    """A context in which torch.load(weights_only=True) may also build OLD_RNG_GLOBALS (torch ≥ 2.5: scoped;
    torch 2.4: add_safe_globals, for the process)."""
    serialization = torch.serialization
    if hasattr(serialization, "safe_globals"):
        return serialization.safe_globals(OLD_RNG_GLOBALS)
    serialization.add_safe_globals([g for g in OLD_RNG_GLOBALS if not isinstance(g, tuple)])
    return contextlib.nullcontext()


def refusal_reason(error: BaseException) -> str:
    """One line on why torch's weights-only unpickler refused a file (its own message runs to ten lines)."""
    text = str(error)
    found = re.search(r"Unsupported (global|operand)[:\s]+(?:GLOBAL\s+)?([\w.]+)", text)
    if found:
        return (f"it holds a Python object a weights-only load may not build ({found.group(1)} {found.group(2)}); "
                "unpickling it fully could run code written by whoever made the file, so it is not opened")
    return (text.strip().splitlines() or [type(error).__name__])[0][:300]


def torch_load_weights_only(path: PathLike, map_location="cpu") -> Any:
    """torch.load with weights_only=True (tensors, numbers, strings, containers, old NumPy RNG states): a file
    made by someone else never runs code. Errors are CheckpointError, one line naming the file."""
    try:
        with _allowed_globals():
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"cannot read {path}: {refusal_reason(e)}") from None
    except Exception as e:  # truncated / not a torch file
        raise CheckpointError(f"cannot read checkpoint {path}: {refusal_reason(e)}") from None


# ---------------------------------------------------------------------------------------------
# Exported models (``export`` writes them): safetensors, a JSON header and raw tensors, nothing unpickled
# ---------------------------------------------------------------------------------------------
EXPORT_FORMAT = "ddpm_helpers/safetensors/1"
EXPORT_SUFFIX = ".safetensors"


def is_safetensors(path: PathLike) -> bool:
    """True when ``path`` names a safetensors file (by its suffix)."""
    return str(path).endswith(EXPORT_SUFFIX)


def read_exported(path: PathLike) -> Tuple[Dict[str, torch.Tensor], TrainConfig, Dict[str, Any]]:
    """Read an exported file without unpickling: (state_dict, TrainConfig, facts). Errors name the file."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: no such file") from e
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    if meta.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{path}: not a ddpm_helpers export (metadata format {meta.get('format')!r}, "
                              f"expected {EXPORT_FORMAT!r}); make one with `python -m ddpm_helpers export`")
    try:
        cfg = config_from_dict(json.loads(meta["config"]))
        facts = json.loads(meta.get("facts", "{}"))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its config metadata is damaged ({e})") from e
    if not isinstance(facts, dict):
        raise CheckpointError(f"{path}: its facts metadata is not a JSON object")
    return state, cfg, facts


def _exported_as_checkpoint(path: Path, map_location="cpu") -> Dict[str, Any]:
    """An exported model as a sampling-only checkpoint dict: its weights under "ema" (or "model", as exported),
    the config, step, elapsed and parameters from its facts, and "exported" (the facts) marking it."""
    state, cfg, facts = read_exported(path)
    state = {k: v.to(map_location) for k, v in state.items()}
    weights = "model" if facts.get("weights") == "model" else "ema"
    return {"format": FORMAT, "config": config_to_dict(cfg), "ema": None, "model": None, weights: state,
            "step": int(facts.get("step", 0)), "elapsed": float(facts.get("training_seconds", 0.0)),
            "parameters": facts.get("parameters"), "data": facts.get("data"), "exported": facts}


def load_checkpoint(path: PathLike, map_location="cpu") -> Dict[str, Any]:
    """Read a checkpoint file (weights-only) or an exported ``.safetensors`` model and check its format; raises
    CheckpointError with the reason, in one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: no such file")
    if is_safetensors(path):
        return _exported_as_checkpoint(path, map_location)
    ckpt = torch_load_weights_only(path, map_location=map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a ddpm_helpers checkpoint (format {found!r}, expected {FORMAT!r})")
    if not isinstance(ckpt.get("config"), dict):
        raise CheckpointError(f"{path} is damaged: it has no 'config' entry; use another checkpoint of the run "
                              "(an earlier ckpt_*.pt)")
    return ckpt


def non_finite_weights(state: Dict[str, torch.Tensor]) -> List[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or infinity (a diverged run)."""
    return [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]


# Fields that must agree for a checkpoint's weights and training state to be reused.
_STRUCTURAL = {"model": None, "diffusion": None, "data": ("image_size", "channels")}


def config_differences(saved: TrainConfig, current: TrainConfig) -> List[str]:
    """What differs between two configs in the fields that make a checkpoint incompatible."""
    diffs = []
    for section, fields in _STRUCTURAL.items():
        a, b = getattr(saved, section), getattr(current, section)
        names = fields or [f.name for f in dataclasses.fields(a)]
        for name in names:
            va, vb = getattr(a, name), getattr(b, name)
            if va != vb:
                diffs.append(f"{section}.{name}: checkpoint has {va!r}, this run has {vb!r}")
    return diffs


def check_compatible(ckpt: Dict[str, Any], current: TrainConfig, path: PathLike = "checkpoint") -> None:
    """Refuse a checkpoint whose model, diffusion or data shape differ from the current config."""
    diffs = config_differences(config_from_dict(ckpt["config"]), current)
    if diffs:
        raise CheckpointError(f"{path} was trained with an incompatible config:\n  " + "\n  ".join(diffs)
                              + "\nStart a new run folder, or resume with the checkpoint's own settings.")


# What must agree between a checkpoint's data and this run's for a resume to continue the same training.
# "source" (the folder) may differ: a Kaggle dataset is mounted at another path in a later session.
DATA_IDENTITY_KEYS = ("kind", "split", "count", "crop", "image_size", "channels", "fingerprint")


def data_differences(saved: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    """What differs between two data identities (see data.TrainingData.identity), one line per field."""
    return [f"{k}: checkpoint has {saved.get(k)!r}, this run has {current.get(k)!r}"
            for k in DATA_IDENTITY_KEYS if saved.get(k) != current.get(k)]


def check_same_data(ckpt: Dict[str, Any], identity: Dict[str, Any], path: PathLike = "checkpoint",
                    allow_change: bool = False, log: Callable[[str], None] = print) -> None:
    """Refuse (DataChangedError) to resume a checkpoint trained on other data, unless allow_change.

    Checkpoints written before data identities were recorded pass, with a one-line warning.
    """
    saved = ckpt.get("data_identity")
    if saved is None:
        log(f"[train] warning: {path} records no data identity (written by an older version): "
            f"cannot check that this run trains on the same data ({ckpt.get('data', 'unknown')!s:.80})")
        return
    diffs = data_differences(saved, identity)
    if not diffs:
        if saved.get("source") != identity.get("source"):
            log(f"[train] the data moved: {saved.get('source')} → {identity.get('source')} (same files)")
        return
    if allow_change:
        log("[train] warning: resuming on other data (allow_data_change):\n  " + "\n  ".join(diffs))
        return
    raise DataChangedError(
        f"{path} was trained on other data than this run would use:\n  " + "\n  ".join(diffs)
        + f"\n  (checkpoint data: {saved.get('source')}; this run: {identity.get('source')})"
        + ("\nThe run was made before 20 of the offline faces were held out for evaluate: start a new run (another "
           "--out), or pass --allow-data-change to continue on the first 80 (its evaluate numbers then compare "
           "with faces it once saw)."
           if saved.get("kind") == identity.get("kind") == "offline" and not saved.get("heldout") else
           "\nPoint --data at the run's data, or pass --allow-data-change to continue on this data anyway."))


def load_model(path: PathLike, ema: bool = True, device="cpu") -> Tuple[torch.nn.Module, NoiseSchedule, TrainConfig]:
    """Load a U-Net (EMA weights by default) and its schedule from a checkpoint or an exported ``.safetensors``
    model, for sampling; weights-only, never a full unpickle.

    Returns (model in eval mode on device, NoiseSchedule on device, TrainConfig). Weights holding NaN or infinity
    (a diverged run) are refused: they would only give black images.
    """
    ckpt = load_checkpoint(path)
    try:
        cfg = config_from_dict(ckpt["config"])
        model = UNet(cfg.model)
    except (TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: its saved config is damaged or from another version ({e})") from None
    key = "ema" if ema and ckpt.get("ema") is not None else "model"
    if ckpt.get(key) is None:          # an export holds one set of weights
        key = "ema" if key == "model" else "model"
    state = ckpt.get(key)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds no weights ({key!r} is missing); use another checkpoint of the run")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the saved model config: {str(e).splitlines()[0]}") from e
    bad = non_finite_weights(state)
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} weight tensors hold NaN or infinity (first: {bad[0]}); the run "
                              "diverged: sample an earlier checkpoint of it, or train again with a lower --lr")
    return model.to(device).eval(), NoiseSchedule.from_config(cfg.diffusion).to(device), cfg


def checkpoint_step(path: PathLike) -> int:
    """The training step in a checkpoint's name: ckpt_00012000.pt → 12000."""
    return int(Path(path).stem.split("_")[1])


def model_step(path: PathLike) -> int:
    """The training step of a checkpoint (from its name) or of an exported model (from its header's facts, nothing
    else read); -1 when neither says."""
    path = Path(path)
    if is_safetensors(path):
        try:
            with safe_open(str(path), framework="pt") as f:
                return int(json.loads((f.metadata() or {}).get("facts", "{}")).get("step", -1))
        except (SafetensorError, OSError, ValueError, TypeError, AttributeError):
            return -1
    return checkpoint_step(path) if re.fullmatch(r"ckpt_\d{8}\.pt", path.name) else -1


def find_run_exports(root: PathLike, run_name: str, max_depth: int = 5) -> List[Path]:
    """Exported models (``*.safetensors``) in run folders named run_name up to max_depth levels under root (and in
    root itself when it is named run_name): a Kaggle dataset holding someone's exported model."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = {p for depth in range(max_depth) for p in root.glob("*/" * depth + f"{run_name}/*{EXPORT_SUFFIX}")}
    return sorted(found)


def find_run_checkpoints(root: PathLike, run_name: str, max_depth: int = 5) -> List[Path]:
    """Checkpoints of run folder ``run_name`` anywhere up to max_depth levels under root, oldest first.

    For a previous Kaggle version's output attached under /kaggle/input (mounted at
    /kaggle/input/<slug>/ or /kaggle/input/notebooks/<owner>/<slug>/); the depth bound keeps the search
    out of CelebA's 200,000 images.
    """
    return _checkpoints_below(Path(root), run_name, max_depth)
