"""One colour per phase, on every chart and page: prefill blue, decode orange.

The profile chart (profile.py), the attention heatmaps (trace.py) and the explorer page
(explorer.py) all read these, so a learner who has seen prefill in blue once sees it in blue
everywhere. tests/test_phase_colors.py checks each picture against this table.
"""

from __future__ import annotations

PHASE_COLORS: dict[str, str] = {
    "prefill": "#1f77b4",  # blue: the whole prompt in one pass
    "decode": "#ff7f0e",  # orange: one token per pass
    "batch-decode": "#9467bd",  # purple: one token for each of B sequences per pass
}


def rgb(phase: str) -> tuple[int, int, int]:
    """The phase's colour as 0-255 (red, green, blue)."""
    h = PHASE_COLORS[phase].lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def phase_cmap(phase: str):
    """A matplotlib colormap from white (probability 0) to the phase's colour (1): the scale
    the explorer page draws its heatmap with. Needs matplotlib."""
    from matplotlib.colors import LinearSegmentedColormap

    return LinearSegmentedColormap.from_list(phase, ["#ffffff", PHASE_COLORS[phase]])
