"""`python -m mobilenet_train.train` (what torchrun and Slurm start): the same as mobilenet-train."""

if __name__ == "__main__":
    from mobilenet_train.cli.train import main

    main()
