"""The package's layer table: read it from the top down to read the package from the bottom up (issue 19).

Each module imports, at its top, only from a lower layer or from a module listed before it in its own layer;
the core imports nothing above the foundation. tests/test_layers.py reads the package with ``ast`` and holds
this table (upward imports, cycles, modules missing here, function-level imports, re-exports), and checks the
``__init__`` docstring and the README's module map against it. Nothing here is imported by the package.
"""

LAYERS = (
    ("foundation", ("layers", "errors", "_types", "files", "env", "config", "images")),
    ("core", ("schedule", "embeddings", "unet", "diffusion", "dpm_solver", "optim")),
    ("lesson aids", ("stats", "anatomy", "oracle", "plotting", "diagram", "source", "exercises")),
    ("data", ("celeba", "cache", "data")),
    ("training", ("runtime", "runfolder", "checkpoint", "state", "train")),
    ("using a model", ("fast_sampling", "generate", "evaluate", "swd", "export")),
    ("entry points", ("session", "figures", "notebook_setup", "kaggle", "ablate", "webfigures", "cli", "__main__",
                      "__init__")),
)

# Modules the table places that other branches of this round add (dpm_solver, diagram, source, exercises,
# export, ablate): the test accepts their absence, nothing else's.
PLANNED = ()

# Which notebooks teach each core and lesson-aid module (their docstrings open with the same line). A planned
# module needs only its docstring's "Taught in notebook(s) ..." line until it is added here.
TAUGHT_IN = {
    "schedule": ("01", "04"), "embeddings": ("02",), "unet": ("02", "03"), "diffusion": ("01", "04", "05"),
    "optim": ("03", "04"),
    "dpm_solver": ("05",),
    "stats": ("01",), "anatomy": ("03",), "oracle": ("05",), "plotting": ("01", "02", "03", "04", "05"),
    "diagram": ("03",), "source": ("01", "02", "03", "04", "05", "06"),
    "exercises": ("01", "02", "03", "04", "05", "06"),
}

# Function-level imports allowed: optional extras or heavy imports one command needs, each marked
# `# optional: why` on its line. At most this many in the package.
MAX_OPTIONAL_IMPORTS = 8
