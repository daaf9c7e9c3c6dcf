"""Compile DeepSpeed's CPU ops once, at install time, not inside the first training run.

DeepSpeed JIT-builds its shared-memory collective op with g++/ninja on first use (about
a minute on 2 cores) and caches it under ~/.cache/torch_extensions. ``infra/setup.sh``
runs this module so that the first ``pretrain`` (and every test) starts warm.
"""

from __future__ import annotations

import time


def main() -> None:
    started = time.time()
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if accelerator.device_name() != "cpu":
        print(f"[warmup] DeepSpeed accelerator is {accelerator.device_name()}: no CPU ops to build")
        return
    builder = accelerator.create_op_builder("ShareMemCommBuilder")
    if builder is None or not builder.is_compatible():
        print("[warmup] this CPU cannot use DeepSpeed's shared-memory collectives; gloo alone will be used")
        return
    builder.load(verbose=False)
    print(f"[warmup] DeepSpeed CPU ops ready in {time.time() - started:.1f} s")


if __name__ == "__main__":
    main()
