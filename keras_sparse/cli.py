"""The ``keras-sparse`` command: ``demo`` and ``report``."""

import argparse
import json
import sys


def _report(args):
    import keras

    import keras_sparse as ks

    model = keras.saving.load_model(args.model, compile=False)
    result = ks.report(model)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result.to_dict(), f, indent=2)
    return 0


def _demo(args):
    from keras_sparse import demo

    demo.run(epochs=args.epochs, sparsity=args.sparsity, seed=args.seed)
    return 0


def main(argv=None):
    """Entry point of the ``keras-sparse`` console script."""
    parser = argparse.ArgumentParser(
        prog="keras-sparse", description="Sparsity and low precision for Keras 3."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a dense and a sparse MLP on digits")
    demo.add_argument("--epochs", type=int, default=None,
                      help="training epochs (default 60, or 3 with KERAS_SPARSE_FAST=1)")
    demo.add_argument("--sparsity", type=float, default=0.9)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    rep = sub.add_parser("report", help="per-layer size and FLOPs of a .keras file")
    rep.add_argument("model", help="path to a .keras model")
    rep.add_argument("--json", help="also write the report as JSON here")
    rep.set_defaults(func=_report)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
