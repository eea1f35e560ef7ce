"""`python -m mobilenet_train.eval`: the same as mobilenet-eval."""

if __name__ == "__main__":
    from mobilenet_train.cli.eval import main

    main()
