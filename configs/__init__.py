# Makes configs/ importable as mobilenet_train.configs (see pyproject.toml), so Hydra can
# load it with pkg:// from any working directory.
