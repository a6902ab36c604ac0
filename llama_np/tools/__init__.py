"""Tools built on the engine: cost formulas, memory sizing, machine peaks, profiling,
attention traces, known model configs and random-weight models."""
