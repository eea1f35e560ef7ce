"""Loaders: odd files, the bad-image policy, data.decode checks, and eval_loader."""

from __future__ import annotations

import logging

import pytest
import torch
from helpers import TINY_FOLDER, data_config, odd_dataset

from mobilenet_train.data import build_data
from mobilenet_train.errors import UserError


def test_odd_files_decode_and_a_bad_image_is_replaced_and_counted(compose, tmp_path, caplog):
    root = odd_dataset(tmp_path / "ds")
    cfg = data_config(compose, root, "data.max_bad_share=0.2", "data.num_workers=1")
    data = build_data(cfg, 32)
    assert data.classes == ["n01", "n02", "n03"]  # hidden dirs are not classes
    assert len(data.train_loader.dataset) == 4 * 3 + 3 + 1  # 3 odd-but-valid + 1 truncated; junk files skipped
    caplog.set_level(logging.WARNING, logger="mobilenet_train")
    for epoch in range(2):
        data.train_loader.sampler.set_epoch(epoch)
        seen = 0
        for images, targets in data.train_loader:
            assert images.dtype == torch.uint8 and images.shape[1:] == (3, 32, 32)
            seen += len(targets)
        assert seen == 16 and data.train_loader.bad_images == 1
    warnings = [r.getMessage() for r in caplog.records if "bad image" in r.getMessage()]
    assert len(warnings) == 1 and "truncated.JPEG" in warnings[0]  # logged once over two epochs
    assert data.train_loader.bad_images_total == 2
    images, targets = next(iter(data.val_loader))
    assert data.val_loader.bad_images == 0 and images.shape == (8, 3, 32, 32)


def test_too_many_bad_images_stop_the_epoch(compose, tmp_path):
    root = odd_dataset(tmp_path / "ds")
    data = build_data(data_config(compose, root), 32)  # default max_bad_share 0.001: 1 of 16 is too many
    with pytest.raises(UserError,
                       match=r"failed to load, more than data.max_bad_share=0.001 \(last: .*truncated.JPEG") as e:
        for _ in data.train_loader:
            pass
    assert "\n" not in str(e.value)


def test_gpu_decode_without_cuda_is_a_user_error(compose, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    root = odd_dataset(tmp_path / "ds", truncated=False)
    with pytest.raises(UserError, match="data.decode=gpu needs CUDA"):
        build_data(data_config(compose, root, "data.decode=gpu"), 32)


def test_train_run_reports_bad_images(cli, tmp_path):
    root = odd_dataset(tmp_path / "ds")
    run = tmp_path / "run"
    cli("mobilenet-train", *TINY_FOLDER, "data=imagenet", f"data.root={root}", "data.num_classes=3",
        "data.batch_size=4", "data.max_bad_share=0.1", "trainer.log_every_steps=1", f"hydra.run.dir={run}",
        cwd=tmp_path)
    import json

    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["bad_images"] == 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert max(e.value for e in acc.Scalars("train/bad_images")) == 1
    assert "truncated.JPEG" in (run / "train.log").read_text()


def test_eval_loader_gives_the_val_loaders_tensors(compose, tmp_path):
    """mobilenet-export's image reading: the same pipeline as mobilenet-eval, on any labelled folder."""
    from mobilenet_train.data import DevicePreprocess, eval_images, eval_loader, normalized

    root = odd_dataset(tmp_path / "ds", truncated=False)
    cfg = data_config(compose, root)
    val = build_data(cfg, 32, train=False).val_loader
    expected = [(images.clone(), targets.clone()) for images, targets in val]
    for where in (root, root / "val"):  # a dataset root, or the split directory itself
        loader, classes = eval_loader(cfg.data, 32, where, batch_size=8)
        assert classes == ["n01", "n02", "n03"]
        got = list(loader)
        assert len(got) == len(expected)
        for (images, targets), (want, want_targets) in zip(got, expected):
            assert images.dtype == torch.uint8 and torch.equal(images, want) and torch.equal(targets, want_targets)
    paths = [path for path, _ in val.dataset.samples[:8]]
    assert torch.equal(eval_images(cfg.data, 32, paths), expected[0][0])
    x = normalized(expected[0][0], cfg.data.normalization)
    assert x.dtype == torch.float32 and x.is_contiguous()
    assert torch.equal(x, DevicePreprocess(cfg.data.normalization, torch.device("cpu"), False)(expected[0][0]))


def test_eval_loader_accepts_an_empty_class_directory(compose, tmp_path):
    from mobilenet_train.data import eval_loader

    root = odd_dataset(tmp_path / "ds", truncated=False)
    (root / "val" / "n04").mkdir()
    cfg = data_config(compose, root, "data.num_classes=4")
    assert build_data(cfg, 32, train=False).classes == ["n01", "n02", "n03", "n04"]  # as mobilenet-eval accepts it
    loader, classes = eval_loader(cfg.data, 32, root / "val", batch_size=64)
    assert classes == ["n01", "n02", "n03", "n04"]
    (images, targets), = list(loader)
    assert len(targets) == 15 and set(targets.tolist()) == {0, 1, 2}
    with pytest.raises(UserError, match="not a directory"):
        eval_loader(cfg.data, 32, tmp_path / "nowhere")
