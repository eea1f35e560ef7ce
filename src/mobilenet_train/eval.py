"""`python -m mobilenet_train.eval CKPT ...`: same as `mobilenet-eval`."""

from .cli import eval_cli

if __name__ == "__main__":
    eval_cli()
