"""DP-SGD step cost vs a non-private step, for ResNet-18 and the UNet, on the same inputs.

Each measurement runs in a fresh process so peak memory is its own (CUDA: max allocated;
CPU: peak RSS over all steps above the RSS before the first, i.e. the steps' working set). Reported as ratios to the
non-private step of the same model and trainable set, measured in this run.

    python bench/dp_step.py [--steps 5] [--batch 32] [--device auto]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import torch
from rich.console import Console
from rich.table import Table

CASES = [
    # (label, task, trainable)
    ("ResNet-18, all weights", "classification", "all"),
    ("ResNet-18, norm+head (default)", "classification", "norm,head"),
    ("UNet, norm+head+decoder (default)", "segmentation", "norm,head,decoder."),
]


def _proc_status_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def _reset_peak_rss() -> int:
    """Reset VmHWM to the current RSS (Linux clear_refs "5") and return that RSS in KiB."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return _proc_status_kib("VmRSS")


def _measure(task: str, trainable: str, private: bool, steps: int, batch: int, device: str, out: mp.Queue) -> None:
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    from common.device import resolve_device
    from common.losses import task_loss
    from common.models import build_model
    from common.models.trainable import select_trainable
    from common.run_config import compose_config

    torch.set_num_threads(torch.get_num_threads())
    cfg = compose_config([f"task={task}", f"device={device}"])
    dev = resolve_device(cfg.device)
    torch.manual_seed(0)
    model = build_model(cfg.model).to(dev).train()
    select_trainable(model, trainable.split(","))  # override the config: this case measures it
    size = cfg.task.image_size
    x = torch.randn(batch, 1, size, size, device=dev)
    y = torch.randint(0, 2, (batch,), device=dev).float() if task == "classification" else torch.randint(0, 3, (batch, size, size), device=dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01)
    if private:
        model = GradSampleModule(model)
        opt = DPOptimizer(opt, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=batch)
    weights = cfg.task.get("class_weights")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        task_loss(task, model(x), y, class_weights=weights).mean().backward()
        opt.step()

    # Reset the kernel's peak-RSS mark before the first step: the allocator keeps what a step
    # took, so the warm-up step is where the working set shows up.
    base_rss = _reset_peak_rss()
    step()  # warm-up (allocator, kernels)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = (_proc_status_kib("VmHWM") - base_rss) / 1024
    out.put(((time.perf_counter() - start) / steps, peak, dev.type))


def measure(task: str, trainable: str, private: bool, steps: int, batch: int, device: str) -> tuple[float, float, str]:
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(task, trainable, private, steps, batch, device, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()
    table = Table(title=f"DP-SGD vs non-private step (batch {args.batch}, {args.steps} timed steps)")
    for col in ("model", "device", "plain s/step", "DP s/step", "time ratio", "plain peak MiB", "DP peak MiB", "memory ratio"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for label, task, trainable in CASES:
        t0, m0, dev = measure(task, trainable, False, args.steps, args.batch, args.device)
        t1, m1, _ = measure(task, trainable, True, args.steps, args.batch, args.device)
        table.add_row(label, dev, f"{t0:.3f}", f"{t1:.3f}", f"{t1 / t0:.2f}x", f"{m0:.0f}", f"{m1:.0f}", f"{m1 / m0:.2f}x")
        Console().print(f"measured {label}")
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
