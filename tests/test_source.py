"""show_source: the package's code with its file (relative to the package) and its true line numbers."""
import inspect
from pathlib import Path

from ddpm_helpers import source
from ddpm_helpers.diffusion import ddpm_sample, q_sample
from ddpm_helpers.schedule import NoiseSchedule
from ddpm_helpers.unet import DoubleConv, UNet


def _numbered(text):
    header, *rows = text.splitlines()
    return header, {int(r.split(maxsplit=1)[0]): r.split("  ", 1)[1] if "  " in r else "" for r in rows}


def test_function_listing_names_its_file_and_the_lines_of_the_real_file():
    text = source.source_text(q_sample)
    header, rows = _numbered(text)
    start = inspect.getsourcelines(q_sample)[1]
    assert header == f"# ddpm_helpers/diffusion.py, lines {start}–{max(rows)}"
    file_lines = Path(inspect.getsourcefile(q_sample)).read_text().splitlines()
    assert rows[start].startswith("def q_sample(")
    for n, line in rows.items():                      # every shown line is that line of the file
        assert line.rstrip() == file_lines[n - 1].rstrip()
    assert any("sqrt_alpha_bars" in line for line in rows.values())


def test_one_method_by_name_by_attribute_and_by_dotted_string_agree():
    a = source.source_text(DoubleConv, "add_time")
    assert a == source.source_text(DoubleConv.add_time) == source.source_text("unet.DoubleConv.add_time")
    assert a.splitlines()[1].split(maxsplit=1)[1].startswith("def add_time(")
    fwd = source.source_text(UNet, "forward")
    assert "ddpm_helpers/unet.py" in fwd and "self.time_embed(t)" in fwd and "class UNet" not in fwd


def test_decorated_functions_classmethods_and_whole_classes():
    assert "@torch.no_grad()" in source.source_text(ddpm_sample)           # unwrapped to the real def
    assert "def linear(" in source.source_text(NoiseSchedule, "linear").splitlines()[2]
    assert "class DoubleConv" in source.source_text(DoubleConv)


def test_show_source_prints_text_outside_jupyter_and_returns_it(capsys):
    text = source.show_source(q_sample)
    assert capsys.readouterr().out.strip() == text.strip()


def test_html_is_highlighted_and_carries_file_and_line_numbers():
    page = source.source_html(DoubleConv, "add_time")
    start = inspect.getsourcelines(DoubleConv.add_time)[1]
    assert "ddpm_helpers/unet.py, lines" in page and str(start) in page and "add_time" in page
    assert "<" in page and "time_proj" in page
