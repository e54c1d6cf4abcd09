"""``make demo``: train the same small CNN with SGD and with SAM on the embedded data, compare.

python -m landscape.demo [--epochs 3]
"""

from __future__ import annotations

import argparse

from landscape.data import load_embedded
from landscape.train import train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train a small CNN with SGD and with SAM.")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data = load_embedded()
    rows = []
    for name in ("sgd", "sam"):
        print(f"== {name.upper()} ==")
        r = train(data, model="cnn", optimizer=name, epochs=args.epochs, seed=args.seed, verbose=2)
        rows.append((name.upper(), r))
    print()
    print(f"{'optimizer':<10}{'train loss':>12}{'train acc':>11}{'test loss':>11}{'test acc':>10}")
    for name, r in rows:
        print(
            f"{name:<10}{r.train_loss:>12.4f}{r.train_acc:>11.4f}{r.test_loss:>11.4f}"
            f"{r.test_acc:>10.4f}"
        )


if __name__ == "__main__":
    main()
