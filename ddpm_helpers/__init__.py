"""ddpm_helpers: a tested DDPM on CelebA faces, behind the notebook series.

Read it from the bottom up, one layer at a time; each module imports only from the layers above it in this
list (or from modules before it in its own line). layers.py holds the table, tests/test_layers.py holds the
package to it.

foundation: layers, errors, _types, files, env, config, images
core: schedule, embeddings, unet, diffusion, dpm_solver, optim
lesson aids: stats, anatomy, oracle, plotting, diagram, source, exercises
data: celeba, cache, data
training: runtime, runfolder, checkpoint, state, train
using a model: fast_sampling, generate, evaluate, swd, export
entry points: session, figures, notebook_setup, kaggle, ablate, webfigures, cli, __main__, __init__

The core (the β schedule, the time embedding, the U-Net, the forward process, loss and samplers, the optimiser's
pieces) is taught in notebooks 01–05 and imports nothing above the foundation. The command line is
``python -m ddpm_helpers``; the first cell of every notebook calls ``notebook_setup.setup()``.
"""
from .checkpoint import CheckpointError, latest_checkpoint, load_model
from .config import UNET_PRESETS, DataConfig, DiffusionConfig, TrainConfig, UNetConfig, unet_preset
from .diffusion import (
                        Trajectory,
                        ddim_sample,
                        ddim_step,
                        ddim_timesteps,
                        ddpm_sample,
                        forward_step,
                        p_mean,
                        p_sample,
                        predict_x0,
                        q_sample,
                        training_loss,
)
from .dpm_solver import dpm_solver_sample
from .embeddings import TimeEmbedding, sinusoidal_embedding
from .evaluate import MetricResult, MetricsUnavailable, SimpleFeatures, compute_metrics
from .export import export_model, load_exported, shipped_model
from .generate import sample_from_checkpoint, write_samples  # not `generate`: it would hide the module
from .schedule import NoiseSchedule, timestep_grid
from .source import show_source
from .unet import UNet, build_unet, count_parameters

__version__ = "0.1.0"
__all__ = ["DataConfig", "DiffusionConfig", "TrainConfig", "UNetConfig", "UNET_PRESETS", "unet_preset",
           "Trajectory", "ddim_sample", "ddim_step", "ddim_timesteps", "ddpm_sample", "forward_step", "p_mean",
           "p_sample", "predict_x0", "q_sample", "training_loss", "TimeEmbedding", "sinusoidal_embedding",
           "NoiseSchedule", "UNet", "build_unet", "count_parameters", "CheckpointError", "latest_checkpoint",
           "load_model", "sample_from_checkpoint", "write_samples", "MetricResult", "MetricsUnavailable",
           "SimpleFeatures", "compute_metrics", "dpm_solver_sample", "timestep_grid", "show_source", "export_model",
           "load_exported", "shipped_model"]
