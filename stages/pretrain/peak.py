"""The peak that MFU is measured against.

On GPU, the card's dense bf16 peak from its datasheet. On CPU there is no datasheet
figure that means anything for a shared VM, so the peak is measured: the best of a few
large fp32 matmuls with the threads this worker uses, on this machine, right now.
"""

from __future__ import annotations

import time

# dense bf16 TFLOP/s per card (NVIDIA datasheets)
GPU_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0,
                   "RTX 4090": 165.0, "A6000": 155.0, "V100": 125.0, "T4": 65.0}


def gpu_peak_tflops(name: str) -> float | None:
    for key, value in GPU_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


def measured_matmul_tflops(size: int = 1024, repeats: int = 6, dtype=None, device: str = "cpu") -> float:
    import torch

    dtype = dtype or torch.float32
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        (a @ b).sum().item()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e12


def peak_tflops(device: str, configured: float | None) -> tuple[float, str]:
    """(peak TFLOP/s of one worker, where the figure comes from)."""
    if configured:
        return configured, "config"
    if device.startswith("cuda"):
        import torch

        name = torch.cuda.get_device_name()
        table = gpu_peak_tflops(name)
        if table:
            return table, f"{name} bf16 datasheet"
        return measured_matmul_tflops(4096, dtype=torch.bfloat16, device=device), f"{name} bf16 matmul, measured"
    return measured_matmul_tflops(), "fp32 matmul on this CPU, measured"
