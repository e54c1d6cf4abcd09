"""The SAM family: step time ÷ base step for every member, and λ_max / test accuracy per seed.

Part 1 (cost): the same ResNet and batch as ``sam_overhead.py`` (ResNet-8 width 16 with BN,
CIFAR-10, batch 128, graph mode). For each member, ``--calls`` consecutive steps (a multiple of
every schedule's period, so a timing covers whole cycles) are timed against as many base-optimizer
steps, the two interleaved; the median ratio of ``--repeats`` repetitions is printed.

Part 2 (effect): on the embedded MNIST subset, the zoo's CNN (BatchNorm) is trained for the same
epochs with SGD, SAM and each cheap member (same seed, initial weights and batch order per seed),
then λ_max of the Hessian (``landscape.hessian_eigenvalues``, training loss on ``--n-hessian``
training images, inference mode) and the test accuracy are measured; ``--seeds`` seeds. The
"kept" column is (λ_SGD − λ_member) / (λ_SGD − λ_SAM) of the means over seeds: the share of
SAM's reduction of λ_max that the member keeps.

    .venv/bin/python benchmarks/sam_family.py [--repeats 3] [--seeds 3] [--epochs 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

from _common import cifar_subset, interleaved_ratio
from sam_overhead import compiled_step  # the same ResNet step, timed the same way

import keras

import landscape
from landscape.train import train
from sam import ESAM, GSAM, SAM, FriendlySAM, LookSAM, SAMSchedule, SAMVariant


def sgd():
    return keras.optimizers.SGD(0.05, momentum=0.9)


# name -> optimizer factory (part 1); schedules' periods divide --calls (10).
MEMBERS = {
    "SAM": lambda: SAM(sgd()),
    "GSAM (α 0.1)": lambda: GSAM(sgd()),
    "FriendlySAM (σ 1, λ 0.9)": lambda: FriendlySAM(sgd()),
    "ESAM (β 0.6, γ 0.5)": lambda: ESAM(sgd()),
    "SAM-ON (normalization only)": lambda: SAMVariant(sgd(), perturbed="normalization"),
    "LookSAM (k 5, α 0.7)": lambda: LookSAM(sgd(), k=5),
    "SAM every 2 steps": lambda: SAMVariant(sgd(), schedule=SAMSchedule.every_k(2)),
    "SAM every 5 steps": lambda: SAMVariant(sgd(), schedule=SAMSchedule.every_k(5)),
    "SAM with probability 0.2": lambda: SAMVariant(sgd(), schedule=SAMSchedule.random(0.2)),
}

# name -> (optimizer, optimizer_options) of landscape.train (part 2): SGD, SAM and the cheap ones.
TRAINED = {
    "SGD": ("sgd", {}),
    "SAM": ("sam", {}),
    "LookSAM k 5": ("looksam", {"k": 5}),
    "SAM every 5": ("sam", {"sam_every": 5}),
    "SAM p 0.2": ("sam", {"sam_probability": 0.2}),
    "SAM last 20 %": ("sam", {"sam_last": 0.2}),
}


def cost(args) -> None:
    x, y, source = cifar_subset(args.batch)
    data = (x, y)
    common = {"depth": args.depth, "width": args.width, "data": data}
    base_step = compiled_step(sgd(), **common)
    print(f"Part 1 ({keras.backend.backend()}): data {source}; ResNet-{args.depth} width "
          f"{args.width}; batch {args.batch}; {args.calls} steps per timing, median of "
          f"{args.repeats}")  # fmt: skip
    print()
    print("| member | step ÷ base step |")
    print("| --- | ---: |")
    for name, make in MEMBERS.items():
        member_step = compiled_step(make(), **common)
        ratio, _, t_base = interleaved_ratio(
            member_step, base_step, repeats=args.repeats, calls=args.calls
        )
        print(f"| {name} | {ratio:.2f} |", flush=True)
    print(f"\n(base step {t_base * 1e3:.0f} ms)")


def effect(args) -> None:
    data = landscape.load_embedded()
    (x_train, y_train), test = data
    probe = (x_train[: args.n_hessian], y_train[: args.n_hessian])
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in TRAINED}
    seconds: dict[str, list[float]] = {name: [] for name in TRAINED}
    for seed in range(args.seeds):
        for name, (optimizer, options) in TRAINED.items():
            start = time.perf_counter()
            result = train(data, model="cnn", optimizer=optimizer, epochs=args.epochs,
                           learning_rate=args.lr, seed=seed, verbose=0,
                           model_kwargs={"filters": (8, 16)},
                           optimizer_options=options)  # fmt: skip
            seconds[name].append(time.perf_counter() - start)
            objective = landscape.Objective(result.model, probe, batch_size=500)
            lam = float(landscape.hessian_eigenvalues(objective, k=1, seed=seed).values[0])
            results[name].append((lam, result.test_acc))
    print()
    print(f"Part 2: CNN (filters 8, 16, BatchNorm), embedded MNIST (6,000 train / 1,000 test), "
          f"{args.epochs} epochs, batch 128, SGD lr {args.lr} momentum 0.9, ρ 0.05; λ_max on "
          f"{args.n_hessian} training images; seeds 0..{args.seeds - 1}")  # fmt: skip
    print()
    print("| optimizer | λ_max per seed | λ_max mean | kept of SAM's reduction | test acc mean "
          "| train time ÷ SGD |")  # fmt: skip
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    mean = {n: statistics.mean(v[0] for v in r) for n, r in results.items()}
    reduction = mean["SGD"] - mean["SAM"]
    for name, runs in results.items():
        kept = (mean["SGD"] - mean[name]) / reduction if reduction else float("nan")
        per_seed = ", ".join(f"{lam:.1f}" for lam, _ in runs)
        acc = statistics.mean(a for _, a in runs)
        rel = statistics.mean(seconds[name]) / statistics.mean(seconds["SGD"])
        print(f"| {name} | {per_seed} | {mean[name]:.1f} | {kept * 100:.0f} % | "
              f"{acc * 100:.2f} % | {rel:.2f} |")  # fmt: skip
    print(f"\nSAM lowers mean λ_max by {reduction:.1f} ({reduction / mean['SGD'] * 100:.0f} %) "
          f"relative to SGD.")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--n-hessian", type=int, default=1000)
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--skip-effect", action="store_true")
    args = parser.parse_args()
    start = time.perf_counter()
    if not args.skip_cost:
        cost(args)
    if not args.skip_effect:
        effect(args)
    print(f"\n(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
