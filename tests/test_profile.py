"""profile: per-step FLOPs and bytes against hand counts on a tiny config; the CLI's files."""

import importlib
import importlib.util
import json
import re
import time
from dataclasses import asdict
from types import SimpleNamespace

import numpy as np
import pytest
from util import closed_after_first_line

from llama_np.cli import main
from llama_np.cli import perf as cli_perf
from llama_np.config import LlamaConfig
from llama_np.errors import ArgumentError, ContextLengthError
from llama_np.model import Model
from llama_np.schema import tensor_names
from llama_np.tools import machine
from llama_np.tools.machine import MachinePeaks
from llama_np.tools.profile import profile_generation

# the module (llama_np.generate is also the name of the function the package exports)
generate_module = importlib.import_module("llama_np.generate")
PEAKS = MachinePeaks(matmul_flops=50e9, memory_bandwidth=5e9, description="test")

# D=8, L=2, H=2, KVH=1 (HD=4), F=16, V=32, untied
TINY = LlamaConfig(dim=8, n_layers=2, n_heads=2, n_kv_heads=1, hidden_dim=16, vocab_size=32,
                   max_seq_len=16)  # fmt: skip


@pytest.fixture(autouse=True)
def no_chart(request, monkeypatch):
    """matplotlib takes seconds to draw profile.png: only the test of the chart draws it."""
    if request.node.name != "test_cli_writes_json_and_chart":
        monkeypatch.setattr(cli_perf, "plot_profile", lambda profile, path: None)


def tiny_model() -> Model:
    rng = np.random.default_rng(0)
    tensors = {
        name: rng.standard_normal(shape, dtype=np.float32)
        for name, shape in tensor_names(TINY).items()
    }
    return Model.from_tensors(TINY, tensors)


def test_flops_and_bytes_by_hand():
    # Per layer, matmul weights: q 8x8 + k 8x4 + v 8x4 + o 8x8 = 192, MLP 3 x 8 x 16 = 384;
    # 2 layers = 1152. Classifier 8 x 32 = 256.
    # FLOPs = 2 x tokens x 1152 + attention 2 layers x 2 (qk, pv) x 2 x H=2 x HD=4 x visible
    #         + classifier 2 x 256 (last position only)
    # prefill of 3 tokens: visible = 1 + 2 + 3 = 6; decode at position p: visible = p + 1
    p = profile_generation(tiny_model(), [1, 2, 3], n_decode=2, peaks=PEAKS)
    assert [s.phase for s in p.steps] == ["prefill", "decode", "decode"]
    assert [(s.start, s.tokens) for s in p.steps] == [(0, 3), (3, 1), (4, 1)]
    assert [s.flops for s in p.steps] == [
        2 * 3 * 1152 + 16 * 6 * 2 * 2 + 512,  # 7808
        2 * 1152 + 16 * 4 * 2 * 2 + 512,  # 3072
        2 * 1152 + 16 * 5 * 2 * 2 + 512,  # 3136
    ]
    # bytes: float32 matmul weights + classifier (1152 + 256) x 4 = 5632, one 32-byte
    # embedding row per token; KV: 2 (K,V) x 2 layers x 1 head x 4 x 4 bytes = 64 per position
    assert [s.weight_bytes for s in p.steps] == [5632 + 3 * 32, 5632 + 32, 5632 + 32]
    assert [s.kv_bytes for s in p.steps] == [3 * 64, 4 * 64, 5 * 64]
    assert p.steps[0].intensity == pytest.approx(7808 / (5728 + 192))
    decode = p.phase("decode")
    assert decode["tokens"] == 2
    assert decode["flops"] == 3072 + 3136
    assert decode["intensity"] == pytest.approx((3072 + 3136) / (2 * 5664 + 9 * 64))
    # rates at the typical time: the median step, times the number of steps
    typical = 2 * float(np.median([p.steps[1].seconds, p.steps[2].seconds]))
    assert decode["mbu"] == pytest.approx((2 * 5664 + 9 * 64) / typical / 5e9)
    assert decode["mfu"] == pytest.approx((3072 + 3136) / typical / 50e9)
    # prefill: the median of its repeats, each on a fresh cache
    assert len(p.prefill_runs) == 5
    assert p.steps[0].seconds == pytest.approx(float(np.median(p.prefill_runs)))
    assert p.ttft == p.steps[0].seconds
    assert p.tpot == pytest.approx(typical / 2)


def test_greedy_tokens_match_full_recompute():
    model = tiny_model()
    prompt = [1, 2, 3]
    p = profile_generation(model, prompt, n_decode=3, peaks=PEAKS)
    for i, token in enumerate(p.generated):
        context = prompt + p.generated[:i]
        logits = model.prefill(context, model.new_cache(len(context)))
        assert token == int(np.argmax(logits))


def test_rejects_too_long_and_zero_steps():
    model = tiny_model()
    with pytest.raises(ContextLengthError, match="context of 16"):
        profile_generation(model, list(range(10)), n_decode=7, peaks=PEAKS)
    with pytest.raises(ArgumentError, match="at least one token"):
        profile_generation(model, [], n_decode=1, peaks=PEAKS)
    with pytest.raises(ArgumentError, match="-n"):
        profile_generation(model, [1], n_decode=0, peaks=PEAKS)


def test_batched_decode_counts_b_tokens_per_weight_read():
    p = profile_generation(tiny_model(), [1, 2, 3], n_decode=2, peaks=PEAKS, batch=4)
    single = [s for s in p.steps if s.phase == "decode"]
    batched = [s for s in p.steps if s.phase == "batch-decode"]
    assert [(s.start, s.tokens) for s in batched] == [(3, 4), (4, 4)]
    for one, four in zip(single, batched, strict=True):
        assert four.flops == 4 * one.flops  # every sequence does all the arithmetic
        assert four.kv_bytes == 4 * one.kv_bytes  # each has its own cache
        assert four.weight_bytes == one.weight_bytes + 3 * 32  # weights once, 4 embedding rows
    assert p.phase("batch-decode")["intensity"] > 2 * p.phase("decode")["intensity"]


def test_cli_writes_json_and_chart(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(machine, "peaks", lambda remeasure=False, threads=None: PEAKS)
    out = tmp_path / "prof"
    assert main(["profile", "-p", "The quick brown fox", "-n", "5", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    data = json.loads((out / "profile.json").read_text())
    assert data["model"] == "stories260K"
    assert [ph["phase"] for ph in data["phases"]] == ["prefill", "decode"]
    assert len(data["steps"]) == 6 and len(data["generated_tokens"]) == 5
    assert data["peaks"]["matmul_flops"] == 50e9  # one roof, the machine's
    assert data["ttft_seconds"] > 0 and data["tpot_seconds"] > 0
    assert "TTFT" in printed.out and "TPOT" in printed.out and "MBU" in printed.out
    assert "prefill" in printed.out and "decode" in printed.out
    if importlib.util.find_spec("matplotlib"):
        assert (out / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert not (out / "profile.png").exists()
        assert ".[plot]" in printed.err


def test_cli_without_matplotlib_still_writes_json(tmp_path, capsys, monkeypatch):
    def no_matplotlib(*args):  # what `import matplotlib` raises where it is not installed
        raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")

    monkeypatch.setattr(machine, "peaks", lambda remeasure=False, threads=None: PEAKS)
    monkeypatch.setattr(cli_perf, "plot_profile", no_matplotlib)
    assert main(["profile", "-n", "2", "--out", str(tmp_path)]) == 0
    assert "pip install -e '.[plot]'" in capsys.readouterr().err
    assert (tmp_path / "profile.json").exists() and not (tmp_path / "profile.png").exists()


def test_a_missing_module_of_ours_is_not_called_a_missing_matplotlib(tmp_path, monkeypatch):
    """Only matplotlib's absence means 'no chart': any other failed import is a bug, raised."""

    def broken(*args):
        raise ModuleNotFoundError(
            "No module named 'llama_np.tools.gone'", name="llama_np.tools.gone"
        )

    monkeypatch.setattr(machine, "peaks", lambda remeasure=False, threads=None: PEAKS)
    monkeypatch.setattr(cli_perf, "plot_profile", broken)
    with pytest.raises(ModuleNotFoundError, match="gone"):
        main(["profile", "-n", "2", "--out", str(tmp_path)])


# ---------------------------------------------------------------- trustworthy measurement


def phase_rows(out: str) -> dict[str, list[str]]:
    return {
        line.split()[0]: line.split()
        for line in out.splitlines()
        if re.match(r"(prefill|decode) +\d+ +\d+ ", line)
    }


def test_threads_flag_pins_blas_threads_and_says_so(tmp_path, capsys, monkeypatch):
    b = machine.blas()
    if not b.controllable:
        pytest.skip(f"this NumPy's BLAS ({b.describe()}) cannot change threads in-process")
    monkeypatch.setattr(machine, "peaks", lambda remeasure=False, threads=None: PEAKS)
    seen = []
    real_decode = Model.decode

    def decode(self, token, cache):
        seen.append(b.threads)
        return real_decode(self, token, cache)

    monkeypatch.setattr(Model, "decode", decode)
    before = b.threads
    assert main(["profile", "-n", "3", "--threads", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "threads used (best median of each phase): prefill 1, decode 1" in out
    assert set(seen) == {1}
    assert b.threads == before  # restored afterwards
    rows = phase_rows(out)
    assert rows["prefill"][1] == rows["decode"][1] == "1"


def test_peaks_are_cached_per_thread_count(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "CACHE_FILE", tmp_path / "machine.json")
    measured = []

    def fake_measure(repeats=7, threads=None):
        measured.append(threads)
        return MachinePeaks(1e9 * threads, 1e9, "fake", threads, machine.machine_key(threads))

    monkeypatch.setattr(machine, "measure", fake_measure)
    assert machine.peaks(threads=1).matmul_flops == 1e9
    assert machine.peaks(threads=2).matmul_flops == 2e9
    assert machine.peaks(threads=1).matmul_flops == 1e9  # from the file
    assert measured == [1, 2]
    machine.peaks(remeasure=True, threads=1)
    assert measured == [1, 2, 1]
    saved = json.loads((tmp_path / "machine.json").read_text())["peaks"]
    assert len(saved) == 2 and all("numpy" in key and "threads" in key for key in saved)


def test_peaks_measured_on_a_busy_machine_are_measured_again(tmp_path, monkeypatch):
    """A cached measurement that other processes disturbed (others_cores > BUSY_CORES) is
    not trusted: the next call measures again, keeping the higher figures until a quiet
    measurement replaces it; a quiet one is then read from the file."""
    monkeypatch.setattr(machine, "CACHE_FILE", tmp_path / "machine.json")
    results = iter([
        MachinePeaks(5e9, 2e9, "busy", 1, machine.machine_key(1), others_cores=1.6),
        MachinePeaks(4e9, 3e9, "busy again", 1, machine.machine_key(1), others_cores=1.2),
        MachinePeaks(9e9, 8e9, "quiet", 1, machine.machine_key(1), others_cores=0.01),
    ])  # fmt: skip
    monkeypatch.setattr(machine, "measure", lambda repeats=7, threads=None: next(results))
    assert machine.peaks(threads=1).busy
    second = machine.peaks(threads=1)  # measured again: the higher of each figure
    assert (second.matmul_flops, second.memory_bandwidth, second.others_cores) == (5e9, 3e9, 1.2)
    third = machine.peaks(threads=1)
    assert (third.matmul_flops, third.description, third.busy) == (9e9, "quiet", False)
    assert machine.peaks(threads=1).description == "quiet"  # from the file: nothing left
    assert next(results, None) is None


def test_poisoned_cache_is_measured_again(tmp_path, capsys, monkeypatch):
    """Cached peaks far too low (measured under load): profile notices and measures again."""
    cache = tmp_path / "machine.json"
    monkeypatch.setattr(machine, "CACHE_FILE", cache)
    n = machine.cpu_count() if machine.blas().controllable else machine.blas().threads
    key = machine.machine_key(n)  # the machine's peaks: a BLAS thread per CPU
    poisoned = MachinePeaks(1e6, 1e6, "poisoned", n, key)  # 1 MFLOP/s, 1 MB/s
    cache.write_text(json.dumps({"peaks": {key: asdict(poisoned)}}))
    monkeypatch.setattr(machine, "measure", lambda repeats=7, threads=None: MachinePeaks(
        1e15, 1e13, "fast", threads, machine.machine_key(threads)))  # fmt: skip
    argv = ["profile", "-n", "3", "--out", str(tmp_path)]
    if machine.blas().controllable:
        argv += ["--threads", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "re-measured the peaks" in out
    assert json.loads(cache.read_text())["peaks"][key]["matmul_flops"] == 1e15
    rows = phase_rows(out)
    assert all(float(r[-1].rstrip("%")) < 100 and float(r[-2].rstrip("%")) < 100
               for r in rows.values())  # fmt: skip


def test_above_peak_is_never_reported_without_a_warning(tmp_path, capsys, monkeypatch):
    """Peaks that measuring again cannot fix: every % over 100 has a WARNING naming it."""
    low = MachinePeaks(1e6, 1e6, "low", 1)
    monkeypatch.setattr(machine, "peaks", lambda remeasure=False, threads=None: low)
    assert main(["profile", "-n", "3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("WARNING")]
    for name, row in phase_rows(out).items():
        for column, what in ((-2, "FLOP/s"), (-1, "bandwidth")):
            if float(row[column].rstrip("%")) > 100:
                assert any(w.startswith(f"WARNING: {name}:") and what in w for w in warnings)
    assert "re-measured the peaks" in out
    assert len(warnings) >= 2


def fake_time(monkeypatch, prefill_per_token: float, decode_per_step: float, others: float):
    """A clock that moves only inside the model: each prefill takes prefill_per_token per
    token, each decode step decode_per_step; /proc/stat shows other processes using `others`
    CPUs all along. The profile's timings and CPU meter read it: its verdicts are tested on
    given timings, with no CPU burnt and nothing left to the machine's load."""
    now = [0.0]
    clock = SimpleNamespace(perf_counter=lambda: now[0])
    monkeypatch.setattr(generate_module, "time", clock)  # the loop times prefill and decode
    monkeypatch.setattr(machine, "time", clock)  # CpuMeter's wall time
    monkeypatch.setattr(machine, "_busy_seconds", lambda: machine._our_seconds() + others * now[0])
    monkeypatch.setattr(machine, "peaks", lambda remeasure=False, threads=None: PEAKS)
    prefill, decode = Model.prefill, Model.decode

    def timed_prefill(self, tokens, *args, **kwargs):
        now[0] += prefill_per_token * len(tokens)
        return prefill(self, tokens, *args, **kwargs)

    def timed_decode(self, token, cache):
        now[0] += decode_per_step
        return decode(self, token, cache)

    monkeypatch.setattr(Model, "prefill", timed_prefill)
    monkeypatch.setattr(Model, "decode", timed_decode)


CPUS = machine.cpu_count()


@pytest.mark.parametrize(
    "prefill_ms, others, warning",
    [
        (1.0, 0.0, None),  # a quiet machine: prefill 1 ms per token, decode 10 ms per step
        (20.0, 0.0, "measurement contaminated: prefill took 20 ms per token, not less than "
                    "decode's 10 ms"),
        (1.0, CPUS, f"TIMINGS INVALID: other processes used {CPUS:.2f} of the {CPUS} CPUs"),
    ],
    ids=["quiet", "prefill slower per token", "every core taken"],
)  # fmt: skip
def test_busy_machine_is_reported(tmp_path, capsys, monkeypatch, prefill_ms, others, warning):
    """Prefill no faster per token than decode (the lesson inverted, which only a disturbed
    measurement does) is reported as contamination; other processes on every core make the
    timings invalid, said first. On a clock that moves only inside the model (fake_time): no
    CPU hogs, and the verdicts do not depend on how busy the machine is."""
    fake_time(monkeypatch, prefill_ms / 1e3, 10 / 1e3, others)
    argv = ["profile", "-p", "The quick brown fox", "-n", "5", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "profile.json").read_text())
    rows = phase_rows(out)
    assert float(rows["prefill"][4]) == pytest.approx(prefill_ms)  # ms per token, as timed
    assert float(rows["decode"][3]) == pytest.approx(10.0)
    assert data["contaminated"] is (warning is not None)
    assert data["invalid"] is (warning is not None and "INVALID" in warning)
    if warning is None:
        assert "contaminated" not in out and "INVALID" not in out
    else:
        assert f"WARNING: {warning}" in out
    if warning and "INVALID" in warning:  # said first, before anything else
        assert out.startswith("prompt:") and out.index("INVALID") < out.index("prefill ")


def others_use(monkeypatch, cores: float, load_average: float) -> None:
    """Make /proc/stat say that other processes used `cores` CPUs during the run, and the
    load average (which counts our own earlier runs too) say `load_average`."""
    import os

    start = time.perf_counter()
    monkeypatch.setattr(
        machine, "_busy_seconds",
        lambda: machine._our_seconds() + cores * (time.perf_counter() - start),
    )  # fmt: skip
    monkeypatch.setattr(os, "getloadavg", lambda: (load_average,) * 3)


def busy_warnings(p) -> list[str]:
    return [w for w in p.warnings if "other processes" in w or "busy" in w or "load" in w]


def test_our_own_earlier_load_is_not_contention(monkeypatch):
    """The load average stays high for a minute after our own last run; only CPU that other
    processes take during this run counts."""
    others_use(monkeypatch, 0.0, load_average=8.0)
    p = profile_generation(tiny_model(), [1, 2, 3], n_decode=3, peaks=PEAKS, repeats=2)
    assert busy_warnings(p) == [] and not p.invalid


def test_a_little_contention_is_noise(monkeypatch):
    others_use(monkeypatch, 0.5, load_average=0.0)
    p = profile_generation(tiny_model(), [1, 2, 3], n_decode=3, peaks=PEAKS, repeats=2)
    (warning,) = busy_warnings(p)
    assert warning.startswith("measurement contaminated: other processes used 0.5")
    assert p.contaminated and not p.invalid


def test_a_core_taken_from_a_run_on_every_core_invalidates_it_loudly(monkeypatch):
    """Threads that wait for each other collapse (10-20×) when a core is taken: the profile
    says so first, in its report, its JSON and its chart's title, not as noise."""
    from llama_np.tools.profile import format_profile, profile_figure

    cpus = machine.cpu_count()
    if cpus == 1 or not machine.blas().controllable:
        pytest.skip("needs 2+ CPUs and a BLAS whose threads can be set")
    others_use(monkeypatch, 1.5, load_average=0.0)
    p = profile_generation(tiny_model(), [1, 2, 3], n_decode=3, peaks=PEAKS, repeats=2,
                           threads=[cpus])  # fmt: skip
    assert p.invalid and p.contaminated
    assert p.warnings[0].startswith("TIMINGS INVALID: other processes used 1.5")
    assert format_profile(p).splitlines()[0] == f"WARNING: {p.warnings[0]}"
    assert p.to_json()["invalid"] is True
    if importlib.util.find_spec("matplotlib"):
        assert "TIMINGS INVALID" in profile_figure(p)._suptitle.get_text()


def test_random_weights_of_a_known_shape(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(machine, "peaks", lambda remeasure=False, threads=None: PEAKS)
    argv = ["profile", "--random", "stories260K", "--prompt-tokens", "8", "-n", "2", "--batch",
            "2", "--repeats", "2", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "8 random token ids; random weights of stories260K's shape" in out
    data = json.loads((tmp_path / "profile.json").read_text())
    assert data["model"] == "stories260K"
    assert [ph["phase"] for ph in data["phases"]] == ["prefill", "decode", "batch-decode"]
    assert data["phases"][2]["tokens"] == 4


def test_random_refuses_unknown_names_and_models_too_big(tmp_path, capsys, monkeypatch):
    assert main(["profile", "--random", "gpt-5", "--out", str(tmp_path)]) == 1
    assert "known: stories260K" in capsys.readouterr().err
    monkeypatch.setattr("llama_np.limits.available_memory", lambda: 10**9)
    assert main(["profile", "--random", "llama-3.2-1b", "--out", str(tmp_path)]) == 1
    assert "needs" in capsys.readouterr().err


def test_ctrl_c_keeps_the_steps_timed_so_far(tmp_path, capsys, monkeypatch):
    """Ctrl-C during profile's decode steps: the steps timed so far are printed and written,
    and the exit status is 130."""
    from llama_np.model import Model as ModelClass

    monkeypatch.setattr(machine, "peaks", lambda remeasure=False, threads=None: PEAKS)
    calls = {"n": 0}
    real = ModelClass.decode

    def decode(self, token, cache):
        calls["n"] += 1
        if calls["n"] == 5:  # 1 warm-up decode, then 3 timed steps, then Ctrl-C
            raise KeyboardInterrupt
        return real(self, token, cache)

    monkeypatch.setattr(ModelClass, "decode", decode)
    out = tmp_path / "prof"
    argv = ["profile", "-p", "Once upon", "-n", "20", "--threads", "1", "--out", str(out)]
    assert main(argv) == 130
    printed = capsys.readouterr()
    assert "interrupted" in printed.err and "3 decode steps" in printed.err
    steps = json.loads((out / "profile.json").read_text())["steps"]
    assert [s["phase"] for s in steps] == ["prefill", "decode", "decode", "decode"]


@pytest.mark.parametrize("name", ["numpy", "numba"])
def test_notes_say_when_decode_ran_in_the_kernel_layer(name):
    """fp32 matrices of FP32_KERNEL_MIN+ weights loaded with compiled kernels decode through
    them, not BLAS: the profile says so, since its thread counts are BLAS's."""
    from llama_np import kernels
    from llama_np.tools.random_model import random_model

    if name == "numba" and not kernels.numba_available():
        pytest.skip(f"{kernels.numba_unavailable()}: compiled kernels not tested")
    config = LlamaConfig(dim=256, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=256,
                         vocab_size=256, max_seq_len=16)  # fmt: skip
    kernels.use(name)
    try:
        model = random_model(config)
        p = profile_generation(model, [1, 2, 3], n_decode=2, peaks=PEAKS)
        tiny = profile_generation(tiny_model(), [1, 2, 3], n_decode=2, peaks=PEAKS)
    finally:
        kernels.use(None)
    said = any(note.startswith(f"kernel layer {name}") for note in p.notes)
    assert said is (name == "numba")
    assert not any(note.startswith("kernel layer") for note in tiny.notes)  # BLAS only


def test_profile_writes_its_files_when_stdout_closes(tmp_path):
    """`llama-np profile ... | head -1`: the profile is still written, and the exit is 0."""
    cache = tmp_path / "cache"  # peaks from a cache of our own: nothing is measured
    (cache / "llama_np").mkdir(parents=True)
    from llama_np import kernels

    kernels.use("numpy")
    try:
        n = machine.cpu_count() if machine.blas().controllable else machine.blas().threads
        key = machine.machine_key(n)
    finally:
        kernels.use(None)
    peaks = MachinePeaks(50e9, 5e9, "test", n, key)
    (cache / "llama_np" / "machine-peaks.json").write_text(
        json.dumps({"peaks": {key: asdict(peaks)}})
    )
    out = tmp_path / "prof"
    argv = ["profile", "-n", "3", "--repeats", "1", "--threads", "1", "--out", str(out)]
    status, first, err = closed_after_first_line(
        argv, {"XDG_CACHE_HOME": str(cache), "LLAMA_NP_KERNELS": "numpy"}
    )
    assert status == 0, err
    assert first.startswith("prompt: ") and "Traceback" not in err
    assert json.loads((out / "profile.json").read_text())["peaks"]["matmul_flops"] == 50e9
    if importlib.util.find_spec("matplotlib"):
        assert (out / "profile.png").exists()


def test_chart_shows_prefill_s_rows_batched_decode_and_the_bound_regions():
    """The KV panel rises through prefill (its T rows, written in one pass, one per position),
    a --batch run's steps are in the time panel, and the roofline names its two regions."""
    pytest.importorskip("matplotlib")
    from llama_np.tools.profile import profile_figure

    p = profile_generation(tiny_model(), [1, 2, 3], n_decode=3, peaks=PEAKS, repeats=1, batch=2)
    ax_t, ax_kv, ax_r = profile_figure(p).axes[:3]
    (prefill,) = [line for line in ax_kv.get_lines() if line.get_label().startswith("prefill")]
    xs, ys = prefill.get_data()
    assert list(xs) == [-0.5, 2.5] and ys[0] == 0 and ys[-1] == p.steps[0].kv_bytes / 1e3
    batched = [line for line in ax_t.get_lines() if line.get_label().startswith("batch-decode")]
    assert len(batched) == 1 and len(batched[0].get_xdata()) == 3
    batch_steps = [s for s in p.steps if s.phase == "batch-decode"]
    assert list(batched[0].get_ydata()) == [1e3 * s.seconds / 2 for s in batch_steps]
    assert {t.get_text() for t in ax_r.texts} >= {"memory-bound", "compute-bound"}


def test_one_thread_is_invalid_only_when_it_had_to_share_its_core(monkeypatch):
    """With one BLAS thread, a core taken elsewhere leaves it a core of its own (noise); all
    of them taken, it runs on a share of one (invalid)."""
    cpus = machine.cpu_count()
    if not machine.blas().controllable:
        pytest.skip("needs a BLAS whose threads can be set")
    model = tiny_model()
    if cpus > 1:
        others_use(monkeypatch, cpus - 1.0, load_average=0.0)
        p = profile_generation(model, [1, 2, 3], n_decode=3, peaks=PEAKS, repeats=2, threads=[1])
        assert p.contaminated and not p.invalid
    others_use(monkeypatch, cpus - 0.1, load_average=0.0)
    p = profile_generation(model, [1, 2, 3], n_decode=3, peaks=PEAKS, repeats=2, threads=[1])
    assert p.invalid and "while this ran on one: its thread shared a CPU" in p.warnings[0]
