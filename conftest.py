"""Root pytest configuration: the notebooks run by nbmake always take their small configuration,
even on a GPU machine with CelebA (the full job belongs to Kaggle / the command line, not to tests)."""
import os

os.environ.setdefault("DDPM_SMALL", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
