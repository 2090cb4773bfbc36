"""Share a trained model as a file that cannot run code: safetensors weights + the config as metadata.

Taught in notebook 05 (sampling from the shipped model) and used by notebook 04's Kaggle output.

A checkpoint (``ckpt_*.pt``) holds everything a run needs to resume exactly (optimizer, RNG states, EMA, data
identity). To *share* a model only the weights and the model's config are needed. ``export_model`` writes them as a
safetensors file: a JSON header and raw tensor bytes, which loads without unpickling anything, so a file made by
someone else never runs code on the reader's machine. The header's metadata carries

    format   "ddpm_helpers/safetensors/1"
    config   the TrainConfig as JSON (machine paths removed: the data root and the run folder)
    facts    JSON: step, images seen, training seconds, which weights (EMA or raw), anything passed as ``facts``

The package ships one such file, ``ddpm_helpers/models/celeba32.safetensors`` (a small 32-px CelebA model), so
that the trained-model cells of the notebooks show faces on any machine: :func:`shipped_model` loads it. Beside it,
``celeba32.json`` holds its training facts (preset, steps, images seen, minutes, data, held-out images, SWD when
known for that step, the training command and the export command). Both are remade from the newest checkpoint of the
run by one command, which reads the facts it cannot compute from the JSON it then rewrites::

    python -m ddpm_helpers export --checkpoint runs/ship32 --out ddpm_helpers/models/celeba32.safetensors \
        --facts ddpm_helpers/models/celeba32.json
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from safetensors.torch import save_file

from ._types import PathLike
from .checkpoint import EXPORT_FORMAT as FORMAT
from .checkpoint import EXPORT_SUFFIX as SUFFIX
from .checkpoint import (
    CheckpointError,
    config_from_dict,
    config_to_dict,
    is_safetensors,
    latest_checkpoint,
    load_checkpoint,
    load_model,
    non_finite_weights,
    read_exported,
)
from .config import TrainConfig
from .files import write_json
from .schedule import NoiseSchedule

SHIPPED_DIR = Path(__file__).resolve().parent / "models"
SHIPPED_NAME = "celeba32"


def _shareable_config(cfg: TrainConfig) -> Dict[str, Any]:
    """The config as a dict without the paths of the machine that trained it (data root, run folder, cache)."""
    d = config_to_dict(cfg)
    d["out_dir"] = Path(cfg.out_dir).name
    d["data"] = {**d["data"], "root": None, "cache_dir": None}
    return d


def export_model(checkpoint: PathLike, out: PathLike, ema: bool = True,
                 facts: Optional[Dict[str, Any]] = None) -> Path:
    """Write the (EMA) weights of a checkpoint and its config to ``out`` as safetensors; returns the path.

    ``checkpoint``: a checkpoint file or a run folder (its newest checkpoint). Non-finite weights are refused: a
    diverged run is not worth sharing. The file is written atomically (a temporary name, then a rename).
    """
    out = Path(out)
    if not is_safetensors(out):
        raise CheckpointError(f"--out {out}: the exported file's name must end in {SUFFIX}, e.g. model{SUFFIX}")
    if out.is_dir():
        raise CheckpointError(f"--out {out} is a folder; give the file's name, e.g. {out / ('model' + SUFFIX)}")
    path = latest_checkpoint(checkpoint)
    if path is None:
        raise CheckpointError(f"--checkpoint {checkpoint}: no checkpoint (ckpt_*.pt) there")
    ckpt = load_checkpoint(path)
    key = "ema" if ema and ckpt.get("ema") is not None else "model"
    if not isinstance(ckpt.get(key), dict):
        raise CheckpointError(f"{path} holds no {key!r} weights; use another checkpoint of the run")
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in ckpt[key].items()}
    bad = non_finite_weights(state)
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} weight tensors hold NaN or infinity (first: {bad[0]}); "
                              "the run diverged: export an earlier checkpoint")
    cfg = config_from_dict(ckpt["config"])
    record = {"step": int(ckpt.get("step", 0)), "weights": key,
              "images_seen": int(ckpt.get("step", 0)) * int(cfg.batch_size),
              "training_seconds": round(float(ckpt.get("elapsed", 0.0)), 1),
              "parameters": sum(v.numel() for v in state.values()), **(facts or {})}
    metadata = {"format": FORMAT, "config": json.dumps(_shareable_config(cfg), sort_keys=True),
                "facts": json.dumps(record, sort_keys=True)}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        save_file(state, str(tmp), metadata=metadata)
        tmp.chmod(0o644)                                  # safetensors creates the file private to its owner
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


# Facts export computes from the checkpoint: a --facts file's values for them (say last time's) are replaced.
COMPUTED_FACTS = ("step", "images_seen", "training_seconds", "training_minutes", "parameters", "weights",
                  "made_with", "sha256", "file")


def facts_path(out: PathLike) -> Path:
    """The training-facts JSON written beside an exported model: NAME.safetensors → NAME.json."""
    out = Path(out)
    return out.with_name(out.name[: -len(SUFFIX)] + ".json") if is_safetensors(out) else out.with_suffix(".json")


def read_facts_file(path: PathLike) -> Dict[str, Any]:
    """A JSON object of facts (UTF-8); CheckpointError naming --facts when the file is missing, not UTF-8, not JSON
    or not an object."""
    path = Path(path)
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"--facts {path}: no such file") from None
    except UnicodeDecodeError as e:
        raise CheckpointError(f"--facts {path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8"
                              ) from None
    except ValueError as e:
        raise CheckpointError(f"--facts {path}: not valid JSON ({e}); fix it or leave --facts out") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"--facts {path}: must hold a JSON object ({{\"key\": value, ...}}), not "
                              f"{type(value).__name__}")
    return value


def export_with_facts(checkpoint: PathLike, out: PathLike, facts_file: Optional[PathLike] = None, ema: bool = True,
                      command: Optional[str] = None) -> Tuple[Path, Path, Dict[str, Any]]:
    """export_model, with the facts of ``facts_file`` (may be the JSON beside ``out``: it is read first) merged in,
    and those facts, the file's SHA-256 and the command written to facts_path(out). Returns (out, json, facts).

    Computed facts (COMPUTED_FACTS) come from the checkpoint, never from the file; a "swd" entry whose "step" is
    not the checkpoint's (an SWD of an earlier model) is dropped, so that no stale score ships."""
    given = {k: v for k, v in (read_facts_file(facts_file) if facts_file else {}).items() if k not in COMPUTED_FACTS}
    swd = given.pop("swd", None)
    out = export_model(checkpoint, out, ema=ema, facts=given)
    _, _, facts = read_exported(out)
    if isinstance(swd, dict) and swd.get("step") == facts["step"]:
        out = export_model(checkpoint, out, ema=ema, facts={**given, "swd": swd})
        facts["swd"] = swd
    facts["training_minutes"] = round(facts.get("training_seconds", 0.0) / 60, 1)
    facts.update(file=out.name, sha256=_sha256(out), made_with=command)
    sidecar = write_json(facts_path(out), dict(sorted(facts.items())))
    return out, sidecar, facts


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_exported(path: PathLike, device="cpu") -> Tuple[torch.nn.Module, NoiseSchedule, TrainConfig]:
    """Load an exported model for sampling: (U-Net in eval mode on device, NoiseSchedule on device, TrainConfig).
    The same as checkpoint.load_model, which reads ``.safetensors`` as it reads ``.pt``; a ``.pt`` is refused here."""
    if not is_safetensors(path):
        raise CheckpointError(f"{path}: an exported model's name ends in {SUFFIX}; for a checkpoint use load_model")
    return load_model(path, device=device)


def shipped_model_path(name: str = SHIPPED_NAME) -> Path:
    """Path of a model shipped inside the package (``ddpm_helpers/models/NAME.safetensors``)."""
    path = SHIPPED_DIR / f"{name}{SUFFIX}"
    if not path.is_file():
        raise CheckpointError(f"no shipped model {name!r} at {path}; shipped: "
                              f"{sorted(p.stem for p in SHIPPED_DIR.glob('*' + SUFFIX)) or 'none'}")
    return path


def shipped_model(device="cpu", name: str = SHIPPED_NAME) -> Tuple[torch.nn.Module, NoiseSchedule, TrainConfig]:
    """The small trained model that ships with the package (32-px CelebA, EMA weights), loaded weights-only.

    Returns (model, schedule, config) like :func:`ddpm_helpers.checkpoint.load_model`. Its training facts are in
    :func:`shipped_model_facts`. Notebooks use it where no better model is at hand.
    """
    return load_exported(shipped_model_path(name), device=device)


def shipped_model_facts(name: str = SHIPPED_NAME) -> Dict[str, Any]:
    """The training facts stored with the shipped model (step, images seen, data, hold-out, SWD, command)."""
    return read_exported(shipped_model_path(name))[2]


def describe(facts: Dict[str, Any]) -> str:
    """One line on a model's training, for a figure caption or a notebook print."""
    minutes = facts.get("training_seconds", 0.0) / 60
    parts = [f"step {facts.get('step', 0):,}", f"{facts.get('images_seen', 0):,} images seen"]
    if minutes and math.isfinite(minutes):
        parts.append(f"{minutes:.0f} min of training")
    if facts.get("hardware"):
        parts.append(f"on {facts['hardware']}")
    return ", ".join(parts)
