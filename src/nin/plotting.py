"""What every picture of the package shares: matplotlib checked before any work, and a figure drawn
without a display (Agg canvas, no pyplot state), for `nin eval --report`, `nin visualize` and `nin plot`."""
from __future__ import annotations

from .errors import NinError


def require_matplotlib(what: str) -> None:
    """Fail before any work when ``what`` (a command or flag) cannot draw its pictures."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise NinError(f"{what} draws its pictures with matplotlib, which is not installed: "
                       "pip install 'network-in-network[report]'") from None


def new_figure(width: float, height: float):
    """A matplotlib Figure of ``width`` x ``height`` inches at 100 dpi, with its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    drawn = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(drawn)
    return drawn
