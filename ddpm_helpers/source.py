"""Taught in notebooks 01, 02, 03, 04, 05, 06.

The code beside the equation: show the package source of a function, class or method, with its file and lines.

Used by every notebook (01–05) next to the equation a function implements, as labml's annotated DDPM sets each
equation beside its lines; here the shown code is the tested code the notebook calls.

    show_source(q_sample)                  # a function
    show_source(DoubleConv, "add_time")    # one method of a class (or show_source(DoubleConv.add_time))
    show_source("unet.UNet.forward")       # a dotted name inside ddpm_helpers

In Jupyter the source is displayed as highlighted HTML; elsewhere it is printed as plain text. Either way the
plain text (a header line, then numbered lines) is returned.
"""
from __future__ import annotations

import html
import importlib
import inspect
from pathlib import Path
from typing import Any

PACKAGE_ROOT = Path(__file__).resolve().parent


def resolve(obj: Any, member: str | None = None) -> Any:
    """The object to show: ``obj`` itself, its attribute ``member``, or a dotted name inside ddpm_helpers
    ("diffusion.q_sample", "unet.DoubleConv.forward"). Decorators (``torch.no_grad``) are unwrapped."""
    if isinstance(obj, str):
        module_name, *attrs = obj.split(".")
        obj = importlib.import_module(f"{__package__}.{module_name}")
        for attr in attrs:
            obj = getattr(obj, attr)
    if member is not None:
        obj = inspect.getattr_static(obj, member) if inspect.isclass(obj) else getattr(obj, member)
        if isinstance(obj, (staticmethod, classmethod)):
            obj = obj.__func__
        elif isinstance(obj, property):
            obj = obj.fget
    return inspect.unwrap(obj)


def relative_file(obj: Any) -> str:
    """The file that defines obj, as ``ddpm_helpers/<module>.py`` inside the package (the full path otherwise)."""
    path = Path(inspect.getsourcefile(obj) or inspect.getfile(obj)).resolve()
    try:
        return str(Path(PACKAGE_ROOT.name) / path.relative_to(PACKAGE_ROOT))
    except ValueError:
        return str(path)


def source_lines(obj: Any, member: str | None = None):
    """(relative file, first line number, list of source lines without newlines) of obj (or obj.member)."""
    target = resolve(obj, member)
    lines, start = inspect.getsourcelines(target)
    return relative_file(target), max(start, 1), [line.rstrip("\n") for line in lines]


def source_text(obj: Any, member: str | None = None) -> str:
    """The plain-text listing: ``# ddpm_helpers/diffusion.py, lines 34–40`` then each line with its number."""
    path, start, lines = source_lines(obj, member)
    end = start + len(lines) - 1
    width = len(str(end))
    body = "\n".join(f"{n:>{width}}  {line}" for n, line in enumerate(lines, start))
    return f"# {path}, lines {start}–{end}\n{body}"


def source_html(obj: Any, member: str | None = None) -> str:
    """The listing as self-contained HTML (inline styles): highlighted with pygments when it is installed."""
    path, start, lines = source_lines(obj, member)
    end = start + len(lines) - 1
    header = f"<div style='font-family:monospace;color:#555'>{html.escape(path)}, lines {start}–{end}</div>"
    code = "\n".join(lines) + "\n"
    try:
        from pygments import formatters, highlight, lexers  # optional: pygments comes with Jupyter; else plain <pre>
    except ImportError:
        width = len(str(end))
        numbered = "\n".join(f"{n:>{width}}  {html.escape(line)}" for n, line in enumerate(lines, start))
        return f"{header}<pre>{numbered}</pre>"
    formatter = formatters.HtmlFormatter(linenos="inline", linenostart=start, noclasses=True)
    return header + highlight(code, lexers.PythonLexer(), formatter)


def _ipython():
    """IPython with its display module, or None outside an IPython installation."""
    try:
        import IPython.display  # optional: IPython is only there with Jupyter / IPython
    except ImportError:
        return None
    return IPython


def _in_jupyter() -> bool:
    ipython = _ipython()
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def show_source(obj: Any, member: str | None = None, html_output: bool | None = None) -> str:
    """Show the source of obj (a function, class or method; or obj.member; or a dotted name in ddpm_helpers)
    with its file, relative to the package, and its line numbers. Returns the plain text.

    html_output: None = highlighted HTML in Jupyter, printed text elsewhere; True / False forces one of them.
    """
    text = source_text(obj, member)
    if html_output is None:
        html_output = _in_jupyter()
    if html_output:
        ipython = _ipython()
        if ipython is None:
            raise ImportError("show_source(html_output=True) needs IPython: pip install ipython")
        ipython.display.display(ipython.display.HTML(source_html(obj, member)))
    else:
        print(text)
    return text
