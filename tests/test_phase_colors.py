"""One colour per phase everywhere: the profile chart, the attention heatmaps and the explorer
page all draw prefill, decode and batched decode in colors.PHASE_COLORS (the page's DOM is
checked in test_explorer.py)."""

import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_hex

import llama_np
from llama_np.tools import colors
from llama_np.tools.colors import PHASE_COLORS
from llama_np.tools.explorer import PAGE, page_data
from llama_np.tools.machine import MachinePeaks
from llama_np.tools.profile import profile_figure, profile_generation
from llama_np.tools.trace import attention_figure, layer_figure, trace_attention

PEAKS = MachinePeaks(50e9, 5e9, "test")
TOOLS = Path(colors.__file__).parent


@pytest.fixture(scope="module")
def model():
    return llama_np.load()


def phase_of(label: str) -> str | None:
    for phase in ("batch-decode", "prefill", "decode"):  # batch-decode before decode
        if label.startswith(phase):
            return phase
    return None


def test_profile_chart_draws_each_phase_in_its_colour(model):
    prompt = model.tokenizer.encode("Once upon a time")
    p = profile_generation(model, prompt, 4, PEAKS, repeats=1, batch=2)
    fig = profile_figure(p)
    seen = {}
    for ax in fig.axes:
        for artist in ax.get_children():
            phase = phase_of(str(artist.get_label()))
            if phase is None:
                continue
            if hasattr(artist, "get_facecolor") and artist.__class__.__name__ == "PathCollection":
                color = artist.get_facecolor()[0]  # a scatter point
            else:
                color = artist.get_color()
            color = np.asarray(color).reshape(-1, 4)[0] if not isinstance(color, str) else color
            seen.setdefault(phase, set()).add(to_hex(color))
    assert {phase: PHASE_COLORS[phase] for phase in seen} == {
        phase: next(iter(c)) for phase, c in seen.items()
    }, seen
    assert all(len(c) == 1 for c in seen.values()), seen
    assert set(seen) == {"prefill", "decode", "batch-decode"}  # every phase is drawn


def test_heatmaps_draw_prefill_and_decode_rows_in_their_colours(model):
    trace = trace_attention(model, "Once upon a time", 4, layers=[0])
    for fig in (layer_figure(trace, 0, [0, 1]), attention_figure(trace, 0, 1)):
        images = [im for ax in fig.axes for im in ax.get_images()]
        assert images
        tops = [to_hex(im.get_cmap()(1.0)) for im in images]
        # each heat map: the prefill rows' image, then the decode rows' image
        assert tops == [PHASE_COLORS["prefill"], PHASE_COLORS["decode"]] * (len(images) // 2)
        assert all(to_hex(im.get_cmap()(0.0)) == "#ffffff" for im in images)


def test_explorer_page_takes_its_colours_from_the_table(model):
    assert page_data(None, None)["colors"] == PHASE_COLORS
    # no phase colour is written into the page itself: it reads DATA.colors
    assert not re.findall(r"#1f77b4|#ff7f0e|#9467bd|31, ?119, ?180|255, ?127, ?14", PAGE)


@pytest.mark.parametrize("module", ["profile.py", "trace.py", "explorer.py"])
def test_no_phase_colour_is_spelled_outside_the_table(module):
    """The mistake this replaces: prefill orange in one module and blue in another."""
    source = (TOOLS / module).read_text()
    named = re.findall(r"tab:\w+|\"(?:Blues|Oranges|Greens|Purples)\"|#[0-9a-fA-F]{6}\b", source)

    def grey(c: str) -> bool:  # neutral greys (grids, regions) belong to no phase
        return c.startswith("#") and c[1:3] == c[3:5] == c[5:7]

    assert [c for c in named if not grey(c.lower())] == [], named
