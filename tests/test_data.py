"""The input pipeline: draft-mode decoding, eval framing, bad-image policy, odd files."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torchvision.transforms import v2

from conftest import TINY
from mobilenet_train.data import FastEvalCrop, FastRandomResizedCrop, build_data, collate
from mobilenet_train.errors import UserError

TINY_FOLDER = [o for o in TINY if not o.startswith("data.generate.")]  # TINY for a dataset on disk


def photo(width=1200, height=900, seed=0) -> Image.Image:
    """A smooth photo-like RGB image (gradients + a few shapes): JPEG-friendly, not flat."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    img = np.stack([128 + 100 * np.sin(x / (60 + 20 * c) + rng.uniform(0, 6)) * np.cos(y / (80 + 10 * c)) for c in range(3)], -1)
    img += rng.normal(0, 4, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def save_jpeg(path, img=None, **kw):
    (img or photo()).save(path, format="JPEG", quality=kw.pop("quality", 92), **kw)
    return path


def test_draft_decoding_keeps_the_crop_geometry(tmp_path):
    path = save_jpeg(tmp_path / "big.jpg")
    outs = {}
    for draft in (False, True):
        torch.manual_seed(3)
        transform = FastRandomResizedCrop(128, scale=(0.5, 1.0), hflip=0.0, draft=draft)
        with Image.open(path) as im:
            outs[draft] = transform(im).float()
            decoded = im.size
        if draft:
            assert decoded[0] < 1200  # the decoder did downscale (1/2, 1/4 or 1/8)
        else:
            assert decoded == (1200, 900)
    assert outs[True].shape == outs[False].shape == (3, 128, 128)
    # Same crop (the same RNG draws on the header size), resampled from a DCT-downscaled
    # decode: measured mean absolute difference 0.33 of 255 here (1.2 on average, 3.1 at most,
    # over 100 of ../shared's ImageNet photos at 128 px); another crop of this image gives 46.
    diff = (outs[True] - outs[False]).abs().mean().item()
    assert diff < 2.0, diff
    torch.manual_seed(4)
    other = FastRandomResizedCrop(128, scale=(0.5, 1.0), hflip=0.0, draft=False)
    with Image.open(path) as im:
        assert (other(im).float() - outs[False]).abs().mean().item() > 5 * max(diff, 0.5)


def test_eval_crop_equals_resize_then_centre_crop_without_draft(tmp_path):
    img = photo(500, 375)
    img.save(tmp_path / "x.png")
    reference = v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(224), v2.PILToTensor()])(img)
    with Image.open(tmp_path / "x.png") as im:  # PNG: no draft
        out = FastEvalCrop(224, "default", 0.875)(im)
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8
    assert (out.int() - reference.int()).abs().max().item() <= 1
    save_jpeg(tmp_path / "x.jpg", photo(1000, 750))
    with Image.open(tmp_path / "x.jpg") as im:
        reference = v2.Compose([v2.Resize(146, antialias=True), v2.CenterCrop(128), v2.PILToTensor()])(im.convert("RGB"))
    with Image.open(tmp_path / "x.jpg") as im:
        out = FastEvalCrop(128, "default", 0.875)(im)  # 750 / 146 > 4: decoded at 1/4
        assert im.size == (250, 188)
    assert (out.float() - reference.float()).abs().mean().item() < 2.0


def test_collate_gives_channels_last_uint8_batches():
    batch = collate([(torch.full((3, 4, 5), i, dtype=torch.uint8), i) for i in range(3)])
    images, targets = batch
    assert images.shape == (3, 3, 4, 5) and images.is_contiguous(memory_format=torch.channels_last)
    assert images[2].eq(2).all() and targets.tolist() == [0, 1, 2]


def odd_dataset(root, truncated=True):
    """3 classes in ImageFolder layout with the odd files real datasets hold."""
    for split in ("train", "val"):
        for c, wnid in enumerate(["n01", "n02", "n03"]):
            d = root / split / wnid
            d.mkdir(parents=True)
            for i in range(4):
                save_jpeg(d / f"{wnid}_{i}.JPEG", photo(160, 120, seed=c * 10 + i))
        d = root / split / "n01"
        photo(150, 100, seed=7).convert("CMYK").save(d / "cmyk.JPEG", format="JPEG")
        photo(150, 100, seed=8).convert("L").save(d / "grey.JPEG", format="JPEG")
        photo(150, 100, seed=9).save(d / "png_named.JPEG", format="PNG")
        (d / ".DS_Store").write_bytes(b"\0junk")
        (d / "._n01_0.JPEG").write_bytes(b"\0\5\26\7appledouble")
        (d / "notes.txt").write_text("not an image")
        (root / split / ".ipynb_checkpoints").mkdir()
    (root / "train" / "n02" / "empty_sub").mkdir()  # a stray directory inside a class
    if truncated:
        good = (root / "train" / "n02" / "n02_0.JPEG").read_bytes()
        (root / "train" / "n02" / "truncated.JPEG").write_bytes(good[: len(good) // 3])
    return root


def data_config(compose, root, *extra):
    return compose(*TINY_FOLDER, "data=imagenet", f"data.root={root}", "data.num_classes=3", "data.batch_size=4",
                   "data.eval_batch_size=8", "data.num_workers=0", *extra)


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
    with pytest.raises(UserError, match=r"failed to load, more than data.max_bad_share=0.001 \(last: .*truncated.JPEG") as e:
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
    cli("mobilenet-train", *TINY_FOLDER, "data=imagenet", f"data.root={root}", "data.num_classes=3", "data.batch_size=4",
        "data.max_bad_share=0.1", "trainer.log_every_steps=1", f"hydra.run.dir={run}", cwd=tmp_path)
    import json

    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["bad_images"] == 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert max(e.value for e in acc.Scalars("train/bad_images")) == 1
    assert "truncated.JPEG" in (run / "train.log").read_text()


def test_gpu_decode_path_logic_on_cpu(tmp_path):
    """GpuDecode's batching, fallbacks and replacement, run with torchvision's CPU decoder
    (the nvJPEG call is the same with device='cuda'; no GPU here)."""
    from mobilenet_train.data import GpuDecode, ImageFiles, build_loader

    root = odd_dataset(tmp_path / "ds", truncated=False)
    (root / "train" / "n03" / "garbage.JPEG").write_bytes(b"not a jpeg at all")
    torch.manual_seed(0)
    dataset = ImageFiles(str(root / "train"), FastRandomResizedCrop(32, (0.5, 1.0)), encoded=True)
    loader = build_loader(dataset, 16, False, 0, 0, max_bad_share=0.1,
                          gpu_decode=GpuDecode(dataset.transform, torch.device("cpu")))
    (images, targets), = list(loader)
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.uint8 and targets.shape == (16,)
    assert loader.bad_images == 1  # the garbage file; CMYK, greyscale and PNG decode through the fallback
    assert images.float().std(dim=(1, 2, 3)).min() > 1  # no blank images
