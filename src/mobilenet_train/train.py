"""`python -m mobilenet_train.train ...` (what torchrun launches): same as `mobilenet-train`."""

from .cli import train_cli

if __name__ == "__main__":
    train_cli()
