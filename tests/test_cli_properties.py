"""Issue 20: a property test of the command line's numeric flags, through their bounds and past them.

Every numeric flag of every subcommand (found from the parser, so a new flag is covered without editing this file)
gets values at and around its bounds, huge and tiny numbers, NaN and infinities and strings that are almost numbers.
Parsing and validation only, in-process (train's config is built; nothing is trained, sampled or written): the
outcome is either accepted or one error line naming the flag, never the "this is a bug" path. Derandomised, a
bounded number of examples, no deadline.
"""
from __future__ import annotations

import argparse
import contextlib
import io

from hypothesis import given, settings
from hypothesis import strategies as st

from ddpm_helpers import cli
from ddpm_helpers.errors import DDPMError

NUMBER_TYPES = {cli.positive_int, cli.non_negative_int, cli.positive_float, cli.non_negative_float, cli.probability,
                cli.eta_value, cli.perturbation, cli.duration, cli.seed_value, cli.loss_weight, int, float}
# What each subcommand needs besides the flag under test (paths that need not exist: nothing is opened).
REQUIRED = {"sample": ["--checkpoint", "ck.pt", "--out", "g.png"], "evaluate": ["--samples", "s"],
            "figures": ["--checkpoint", "ck.pt", "--out", "f"], "kaggle": ["--user", "me"],
            "export": ["--checkpoint", "ck.pt", "--out", "m.safetensors"], "train": ["--preset", "smoke"]}


def numeric_flags():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted((name, action.option_strings[0]) for name, p in sub.choices.items() for action in p._actions
                  if action.option_strings and action.type in NUMBER_TYPES)


FLAGS = numeric_flags()
EDGES = st.one_of(
    st.integers(-3, 3), st.sampled_from([2 ** 31 - 1, 2 ** 32 - 1, 2 ** 32, 2 ** 63 - 1, 2 ** 63, 2 ** 64, 10 ** 30,
                                         1_764_770_000_123_456_789, -(2 ** 63)]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e-320, 1 - 1e-16, 0.9999, 1.0000001, -0.0]),
).map(str) | st.sampled_from(["", " ", "1e3", "1e400", "-1e400", "0x10", "1_000", " 7 ", "٣", "nan", "inf", "-inf",
                              "1,5", "5%", "min-snr-0", "min-snr-nan", "min-snr-1e400", "0s", "1h", "99999999h",
                              "1e308s", "--", "-"])


def run_flag(command: str, flag: str, value: str):
    """Parse `command REQUIRED flag=value` and validate it; (exit code or None when accepted, stderr text)."""
    parser, err = cli.build_parser(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            args = parser.parse_args([command, *REQUIRED.get(command, []), f"{flag}={value}"])
        except SystemExit as e:
            return e.code, err.getvalue()
    try:
        if command == "train":
            cli.build_train_config(args)        # every TrainConfig field is checked as it is built
    except DDPMError as e:
        message, code = cli.explain(e, args)
        return code, message
    return None, ""


@settings(max_examples=400, derandomize=True, deadline=None, database=None)
@given(flag=st.sampled_from(FLAGS), value=EDGES)
def test_numeric_flags_never_reach_the_bug_path(flag, value):
    command, name = flag
    code, text = run_flag(command, name, value)
    if code is None:
        return                                           # accepted: a value in range
    assert code == cli.EXIT_ERROR, (command, name, value, code, text)
    lines = [line for line in text.strip().splitlines() if not line.startswith("(see:")]
    assert len(lines) == 1 and "bug" not in text, (command, name, value, text)
    assert name in text or name.lstrip("-").replace("-", "_") in text, (command, name, value, text)


def test_the_flags_found_cover_every_subcommands_numbers():
    found = {f for f in FLAGS}
    for expected in [("sample", "--seed"), ("sample", "--steps"), ("sample", "--n"), ("sample", "--eta"),
                     ("train", "--lr"), ("train", "--ema-decay"), ("train", "--time-budget"), ("train", "--seed"),
                     ("evaluate", "--kid-subset-size"), ("ablate", "--seeds"), ("kaggle", "--poll")]:
        assert expected in found, expected
    assert run_flag("sample", "--seed", "1764770000123456789")[0] == cli.EXIT_ERROR
    assert run_flag("sample", "--seed", str(2 ** 32 - 1))[0] is None
