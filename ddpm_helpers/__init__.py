"""ddpm_helpers: a tested DDPM on CelebA faces, behind the notebook series.

Modules: config (frozen dataclasses, presets), schedule (β and derived terms, timestep grids), diffusion (forward
process, loss, reverse step, DDPM/DDIM samplers), dpm_solver (DPM-Solver++ 2M/3M and UniPC in
10–20 model calls), embeddings (time embedding), unet (the network),
celeba (finding CelebA), cache (the uint8 cache), data (crops, offline faces, batches), train (the loop,
EMA, AMP), state (checkpoint contents, exact resume), runtime (device, AMP dtype, DDP, signals),
runfolder (one training per folder), checkpoint (files), evaluate (FID/KID), plotting (figures),
source (show_source: the code beside the equation), exercises (self-checking exercises of notebooks 01–05).
The command line is ``python -m ddpm_helpers``.
"""
from .config import DataConfig, DiffusionConfig, TrainConfig, UNetConfig, UNET_PRESETS, unet_preset
from .diffusion import (Trajectory, ddim_sample, ddim_step, ddim_timesteps, ddpm_sample, forward_step, p_mean,
                        p_sample, predict_x0, q_sample, training_loss)
from .embeddings import TimeEmbedding, sinusoidal_embedding
from .schedule import NoiseSchedule, timestep_grid
from .dpm_solver import dpm_solver_sample
from .source import show_source
from .unet import UNet, build_unet, count_parameters

__version__ = "0.1.0"
from .checkpoint import CheckpointError, latest_checkpoint, load_model
from .generate import sample_from_checkpoint, write_samples  # not `generate`: it would hide the module
from .evaluate import MetricResult, MetricsUnavailable, SimpleFeatures, compute_metrics
