"""Peak FLOP/s, memory bandwidth and memory size of some devices, for roofline estimates.

A roofline says a phase can go no faster than its FLOPs ÷ peak FLOP/s (compute) nor its bytes
÷ bandwidth (memory); whichever is slower bounds it. Published figures are peaks, dense (no
2:4 sparsity), at the precision a model runs in on that device; real kernels reach 50-80%.
"this-machine" is measured (see machine.py) with the float32 NumPy that runs llama_np.

Memory is the exact number of bytes the device offers, not the round figure on the box: an
"80 GB" H100 shows 81,559 MiB in nvidia-smi, 85,520,809,984 bytes, so whether something fits
is decided against that. Each preset says where its capacity comes from.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from ..errors import ArgumentError
from . import machine


@dataclass(frozen=True)
class Hardware:
    name: str
    flops: float  # peak FLOP/s of matrix-matrix products
    bandwidth: float  # bytes/s from device memory
    memory_bytes: int | None  # device memory, exact bytes; None if unknown
    description: str
    memory_source: str = ""  # where memory_bytes comes from

    @property
    def ridge(self) -> float:
        """FLOPs per byte where compute and memory take equally long: below it, memory-bound."""
        return self.flops / self.bandwidth


GB = 10**9  # vendors quote decimal gigabytes, for memory size and for bandwidth
TB = 10**12
MiB, GiB = 2**20, 2**30  # nvidia-smi counts in MiB

PRESETS: dict[str, Hardware] = {
    h.name: h
    for h in [
        # Apple M2 (MacBook Air 2022), CPU only. 100 GB/s unified LPDDR5 and 8/16/24 GB are
        # Apple's figures (apple.com newsroom, 2022-06-06); we take the 16 GB configuration,
        # which is 16 GiB (`sysctl hw.memsize`: 17,179,869,184), shared with the OS.
        # Apple publishes no CPU FLOP/s: 4 performance cores × 3.49 GHz × 32 float32 FLOP per
        # cycle (4 NEON FMA pipes × 4 lanes × 2) = 447 GFLOP/s, derived, NEON only (the AMX
        # matrix unit that Accelerate's BLAS uses is faster but undocumented).
        Hardware(
            "laptop-m2",
            447e9,
            100 * GB,
            16 * GiB,
            "Apple M2 laptop CPU, float32 NEON (derived)",
            "Apple's '16GB': 16 GiB of unified memory, shared with the OS",
        ),
        # NVIDIA H100 SXM5 datasheet: BF16 Tensor Core 989 TFLOP/s dense (1979 with sparsity),
        # HBM3 3.35 TB/s, "80GB". nvidia-smi shows 81,559 MiB on an H100 80GB HBM3 (e.g. the
        # totals collected in modal-labs/modal-client#2797, NVIDIA/nccl#1264's nvidia-smi).
        Hardware(
            "h100",
            989 * TB,
            3.35 * TB,
            81559 * MiB,
            "NVIDIA H100 SXM, bf16 Tensor Core",
            "nvidia-smi shows 81,559 MiB; the datasheet says '80GB'",
        ),
        # NVIDIA A100 80GB SXM datasheet: BF16 Tensor Core 312 TFLOP/s dense, HBM2e 2,039 GB/s;
        # nvidia-smi shows 81,920 MiB (modal-labs/modal-client#2797).
        Hardware(
            "a100-80gb",
            312 * TB,
            2039 * GB,
            81920 * MiB,
            "NVIDIA A100 80GB SXM, bf16 Tensor Core",
            "nvidia-smi shows 81,920 MiB; the datasheet says '80GB'",
        ),
        # NVIDIA Ada (RTX 4090) whitepaper: BF16 Tensor with FP32 accumulate 165.2 TFLOP/s dense,
        # GDDR6X 1,008 GB/s, "24 GB"; nvidia-smi shows 24,564 MiB (e.g. RLinf/RLinf#255).
        Hardware(
            "rtx-4090",
            165.2 * TB,
            1008 * GB,
            24564 * MiB,
            "NVIDIA GeForce RTX 4090, bf16 Tensor",
            "nvidia-smi shows 24,564 MiB; the whitepaper says '24 GB'",
        ),
        # Google Cloud TPU v5e docs: 197 TFLOP/s bf16 per chip, HBM2 "16 GB" at 819 GB/s. HBM
        # comes in power-of-two stacks: 16 GiB, some of which the runtime keeps for itself.
        Hardware(
            "tpu-v5e",
            197 * TB,
            819 * GB,
            16 * GiB,
            "Google TPU v5e (one chip), bf16",
            "Google's '16 GB' of HBM2: 16 GiB",
        ),
        # NVIDIA H200 SXM datasheet: BF16 Tensor Core 989 TFLOP/s dense (1,979 with sparsity),
        # HBM3e 4.8 TB/s, "141 GB"; nvidia-smi shows 143,771 MiB.
        Hardware(
            "h200",
            989 * TB,
            4.8 * TB,
            143771 * MiB,
            "NVIDIA H200 SXM, bf16 Tensor Core",
            "nvidia-smi shows 143,771 MiB; the datasheet says '141 GB'",
        ),
        # NVIDIA HGX B200 datasheet (8 GPUs): FP16/BF16 Tensor Core 36 PFLOP/s with sparsity,
        # so 2.25 PFLOP/s dense per GPU; HBM3e 64 TB/s, 8 TB/s per GPU; nvidia-smi shows
        # 183,359 MiB per GPU.
        Hardware(
            "b200",
            2250 * TB,
            8 * TB,
            183359 * MiB,
            "NVIDIA B200 (HGX), bf16 Tensor Core",
            "nvidia-smi shows 183,359 MiB per GPU; the datasheet says '180 GB'",
        ),
        # AMD Instinct MI300X datasheet: BF16 1,307.4 TFLOP/s dense (2,614.9 with sparsity),
        # HBM3 5.3 TB/s, "192 GB"; rocm-smi's VRAM total (and rocminfo's pool) is
        # 206,141,652,992 bytes.
        Hardware(
            "mi300x",
            1307.4 * TB,
            5.3 * TB,
            206_141_652_992,
            "AMD Instinct MI300X, bf16 Matrix",
            "rocm-smi's VRAM total: 206,141,652,992 bytes; the datasheet says '192 GB'",
        ),
    ]
}
THIS_MACHINE = "this-machine"
NAMES = (THIS_MACHINE, *PRESETS)


def this_machine(remeasure: bool = False) -> Hardware:
    """This machine: float32 matmul FLOP/s and bandwidth measured by NumPy with a BLAS thread
    per CPU (its ceilings: what all its cores can do), and its RAM."""
    peaks = machine.machine_peaks(remeasure)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = None  # not a POSIX system
    return Hardware(
        THIS_MACHINE,
        peaks.matmul_flops,
        peaks.memory_bandwidth,
        ram,
        f"this machine ({peaks.description}), float32 NumPy, measured"
        + (
            f" WHILE BUSY (other processes used {peaks.others_cores:.2f} CPUs: too low; "
            "--remeasure on a quiet machine)"
            if peaks.busy
            else ""
        ),
        "this machine's RAM (sysconf), shared with the OS and every other process",
    )


def get_hardware(name: str, remeasure: bool = False) -> Hardware:
    """A preset by name (case-insensitive); "this-machine" measures this machine (cached;
    `remeasure` measures again)."""
    key = name.lower()
    if key == THIS_MACHINE:
        return this_machine(remeasure)
    if key in PRESETS:
        return PRESETS[key]
    raise ArgumentError(f"unknown hardware {name!r}; known: {', '.join(NAMES)}")


def custom_hardware(flops: float, bandwidth: float, memory_bytes: float | None = None) -> Hardware:
    """Hardware from figures given by the user (FLOP/s, bytes/s, bytes)."""
    # Finite and at least 1: the estimates divide by them (inf or 1e-45 would give 0 s or inf).
    if not (1 <= flops < math.inf and 1 <= bandwidth < math.inf):
        raise ArgumentError(
            f"--flops and --bandwidth must both be finite numbers >= 1, got {flops} and {bandwidth}"
        )
    if memory_bytes is not None and not 1 <= memory_bytes < math.inf:
        raise ArgumentError(
            f"--device-memory must be a finite number of bytes >= 1, got {memory_bytes}"
        )
    memory = None if memory_bytes is None else int(memory_bytes)
    return Hardware("custom", flops, bandwidth, memory, "custom figures", "--device-memory")
