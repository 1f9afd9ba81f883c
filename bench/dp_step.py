"""DP-SGD step cost vs a non-private step, for ResNet-18 and the UNet, on the same inputs.

Peak memory is measured in a fresh process per variant (CUDA: max allocated; CPU: peak RSS
above the RSS before the first step, i.e. the steps' working set). Time: the non-private step
and every DP mode run interleaved in one process, each keeping its fastest step, so a loaded
machine slows them alike. Reported as ratios to the non-private step of the same model, size
and trainable set, measured in this run. The DP step is the training path's: ``client.private_training``
(``--mode``, default ``auto``), one logical batch in one physical batch, clipping and noise.

    python bench/dp_step.py                       # all-weights cases at 128/224 px (ResNet-18), 128/256 px (UNet)
    python bench/dp_step.py --size 224 --json out.json
    python bench/dp_step.py --mode hooks,ghost,bk --size 128
    python bench/dp_step.py --defaults            # the default trained parts at the tasks' sizes
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

MODELS = {"resnet18": "classification", "unet": "segmentation"}
# Clinical resolutions: chest X-rays are usually resized to 224 px, liver CT slices to 256 px.
SIZES = {"resnet18": (128, 224), "unet": (128, 256)}
# The default trained parts at the tasks' default sizes (conf/model/*.yaml, conf/task/*.yaml).
DEFAULT_CASES = [("resnet18", 32, "norm,head"), ("unet", 64, "norm,head,decoder.")]


@dataclass(frozen=True)
class Case:
    model: str
    size: int
    trainable: str


@dataclass
class Result:
    model: str
    size: int
    trainable: str
    device: str
    mode: str
    batch: int
    plain_s: float
    dp_s: float
    plain_mib: float
    dp_mib: float
    time_ratio: float
    memory_ratio: float


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


def _step_fn(case: Case, mode: str | None, batch: int, device: str, chunk_mib: float):
    """A closure running one training step of ``case`` (``mode=None``: non-private), and its device."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    from client.private_training import make_private
    from common.device import resolve_device
    from common.losses import task_loss
    from common.models import build_model
    from common.models.trainable import select_trainable
    from common.run_config import compose_config

    task = MODELS[case.model]
    cfg = compose_config([f"task={task}", f"device={device}", f"task.image_size={case.size}"])
    dev = resolve_device(cfg.device)
    torch.manual_seed(0)
    model = build_model(cfg.model).to(dev).train()
    select_trainable(model, case.trainable.split(","))  # override the config: this case measures it
    size = case.size
    x = torch.randn(batch, 1, size, size, device=dev)
    y = torch.randint(0, 2, (batch,), device=dev).float() if task == "classification" else torch.randint(0, 3, (batch, size, size), device=dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01)
    weights = cfg.task.get("class_weights")
    if mode is None:

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            task_loss(task, model(x), y, class_weights=weights).mean().backward()
            opt.step()

        return step, dev
    loader = DataLoader(TensorDataset(x.cpu(), y.cpu()), batch_size=batch)  # sets q and the expected batch
    private = make_private(
        PrivacyEngine(accountant="rdp"), model=model, optimizer=opt, loader=loader, noise_multiplier=1.0,
        max_grad_norm=1.0, mode=mode, chunk_mib=chunk_mib,
    )

    def dp_step() -> None:
        private.optimizer.zero_grad(set_to_none=True)
        private.backward(task_loss(task, private.model(x), y, class_weights=weights))
        private.optimizer.step()

    return dp_step, dev


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _measure_memory(case: Case, mode: str | None, batch: int, device: str, chunk_mib: float, out: mp.Queue) -> None:
    """Peak memory of one step in this fresh process (CUDA: max allocated; CPU: peak RSS growth)."""
    step, dev = _step_fn(case, mode, batch, device, chunk_mib)
    # Reset the kernel's peak-RSS mark before the first step: the allocator keeps what a step
    # took, so the warm-up step is where the working set shows up.
    base_rss = _reset_peak_rss()
    step()
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()
    _sync(dev)
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else (_proc_status_kib("VmHWM") - base_rss) / 1024
    out.put((peak, dev.type))


def _measure_time(case: Case, modes: list[str], steps: int, batch: int, device: str, chunk_mib: float, out: mp.Queue) -> None:
    """Seconds per step of the non-private step and each mode, interleaved in one process.

    Steps alternate between the variants and each keeps its fastest step, so load from other
    processes on a shared machine hits every variant alike instead of whichever ran during it.
    """
    variants = [None, *modes]
    fns = [_step_fn(case, m, batch, device, chunk_mib) for m in variants]
    best = [float("inf")] * len(variants)
    for fn, dev in fns:  # warm-up (allocator, kernels)
        fn()
        _sync(dev)
    for _ in range(steps):
        for i, (fn, dev) in enumerate(fns):
            start = time.perf_counter()
            fn()
            _sync(dev)
            best[i] = min(best[i], time.perf_counter() - start)
    out.put(best)


def _in_process(target, *args):
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()  # before join: a large result would otherwise block the child's exit
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"{target.__name__}{args[:2]} failed with exit code {proc.exitcode}")
    return result


def cases(args: argparse.Namespace) -> list[Case]:
    """The all-weights clinical cases (``--size`` picks one size for both models), or the defaults."""
    if args.defaults:
        return [Case(*c) for c in DEFAULT_CASES]
    chosen = []
    for model in args.models.split(","):
        if model not in MODELS:
            raise SystemExit(f"--models: unknown model {model!r}; valid: {', '.join(MODELS)}")
        if model == "unet" and args.size is not None and args.size % 32:
            raise SystemExit(f"--size {args.size}: the UNet needs a multiple of 32")
        sizes = SIZES[model] if args.size is None else (args.size,)
        chosen += [Case(model, s, "all") for s in sizes]
    return chosen


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=None, help="image side for both models (default: 128 and 224/256)")
    parser.add_argument("--models", default="resnet18,unet", help="comma-separated: resnet18, unet")
    parser.add_argument("--defaults", action="store_true", help="the default trained parts at the tasks' sizes")
    parser.add_argument("--mode", default="auto", help="training.grad_sample_mode, or several comma-separated")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant after one warm-up step")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--chunk-mib", type=float, default=64, help="training.grad_sample_chunk_mib")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--json", type=Path, default=None, help="write one JSON object per case and mode here")
    args = parser.parse_args(argv)
    modes = args.mode.split(",")
    console = Console(width=160, stderr=True)
    results: list[Result] = []
    for case in cases(args):
        times = _in_process(_measure_time, case, modes, args.steps, args.batch, args.device, args.chunk_mib)
        m0, dev = _in_process(_measure_memory, case, None, args.batch, args.device, args.chunk_mib)
        for mode, t1 in zip(modes, times[1:]):
            m1, _ = _in_process(_measure_memory, case, mode, args.batch, args.device, args.chunk_mib)
            t0 = times[0]
            results.append(Result(case.model, case.size, case.trainable, dev, mode, args.batch, t0, t1, m0, m1, t1 / t0, m1 / m0))
            console.print(f"measured {case.model} {case.size}px {case.trainable} {mode}: {t1 / t0:.2f}x time, {m1 / m0:.2f}x memory")
    table = Table(title=f"DP-SGD vs non-private step (batch {args.batch}, {args.steps} timed steps)")
    for col in ("model", "size", "trained", "mode", "device", "plain s/step", "DP s/step", "time ratio",
                "plain peak MiB", "DP peak MiB", "memory ratio"):
        table.add_column(col, justify="left" if col in ("model", "trained", "mode") else "right")
    for r in results:
        table.add_row(r.model, str(r.size), r.trainable, r.mode, r.device, f"{r.plain_s:.3f}", f"{r.dp_s:.3f}",
                      f"{r.time_ratio:.2f}x", f"{r.plain_mib:.0f}", f"{r.dp_mib:.0f}", f"{r.memory_ratio:.2f}x")
    Console(width=160).print(table)
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
        console.print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
