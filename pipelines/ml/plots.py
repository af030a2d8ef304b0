"""Report figures: two panels side by side, rendered headless to PNG bytes."""

from __future__ import annotations

import io
from typing import Any


def two_panels(width: float = 10.0, height: float = 4.0) -> tuple[Any, tuple[Any, Any]]:
    """A figure with two axes side by side, on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(width, height))
    return fig, (left, right)


def png_bytes(fig: Any, dpi: int = 90) -> bytes:
    """The figure as PNG (legends, tight layout); the figure is closed."""
    import matplotlib.pyplot as plt

    for ax in fig.axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
