"""ImageNet-style folders: load_dataset("imagefolder:PATH"), the resize and centre crop, random
resized crops on the device, and the errors for folders that are missing, empty or malformed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from imagefolders import CLASSES, write_image_folder
from torchvision.transforms import v2

from robust_nb.data import (
    DatasetUnavailableError,
    DeviceLoader,
    load_dataset,
    resize_center_crop,
    resized_crop,
    resized_crop_boxes,
)


def test_a_folder_loads_as_a_dataset(tmp_path):
    sizes = [(12, 12), (20, 14), (9, 30), (16, 16)]      # any size: resized, then centre-cropped
    write_image_folder(tmp_path, n_train=6, n_val=3, sizes=sizes)
    data = load_dataset(f"imagefolder:{tmp_path}", image_size=10, device="cpu")
    (x, y), (xt, yt) = data.train, data.test
    assert x.shape == (12, 3, 10, 10) and xt.shape == (6, 3, 10, 10)
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert data.classes == CLASSES and data.num_classes == 2 and data.flip
    assert y.tolist() == [0] * 6 + [1] * 6 and yt.tolist() == [0] * 3 + [1] * 3
    # the classes differ in colour: blue images are bluer than red ones
    assert x[y == 0, 2].mean() > x[y == 0, 0].mean() and x[y == 1, 0].mean() > x[y == 1, 2].mean()
    assert len(data.mean) == 3 and all(s > 0 for s in data.std)


@pytest.mark.parametrize("shape", [(3, 20, 14), (3, 9, 30), (3, 33, 33), (3, 7, 8)])
def test_resize_and_centre_crop_match_torchvision(shape):
    image = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ours = resize_center_crop(image, 12)
    ref = v2.CenterCrop(12)(v2.Resize(12, antialias=True)(image))
    assert ours.shape == ref.shape == (3, 12, 12) and ours.dtype == torch.uint8
    # torchvision's uint8 path rounds inside its own kernel: at most one grey level apart
    assert (ours.int() - ref.int()).abs().max() <= 1


def test_a_full_box_is_the_identity_and_a_half_box_is_an_upscaled_half():
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    full = torch.tensor([[0.5, 0.5, 1.0, 1.0]] * 2)
    torch.testing.assert_close(resized_crop(x, full), x)
    left = torch.tensor([[0.25, 0.5, 0.5, 1.0]] * 2)       # the left half, stretched to 8 wide
    ref = F.interpolate(x[..., :4], size=(8, 8), mode="bilinear", align_corners=False)
    # the last column samples at 3.25 of the half: torchvision-style crop-then-resize clamps to
    # pixel 3, the grid sampler blends in pixel 4 (just outside the box); the rest agree
    torch.testing.assert_close(resized_crop(x, left)[..., :-1], ref[..., :-1])


@pytest.mark.parametrize("seed", range(5))
def test_random_boxes_follow_randomresizedcrop(seed):
    boxes = resized_crop_boxes(4000, torch.Generator().manual_seed(seed))
    cx, cy, w, h = boxes.unbind(1)
    assert ((w > 0) & (w <= 1) & (h > 0) & (h <= 1)).all()
    assert ((cx - w / 2 >= -1e-6) & (cx + w / 2 <= 1 + 1e-6)).all()     # inside the image
    assert ((cy - h / 2 >= -1e-6) & (cy + h / 2 <= 1 + 1e-6)).all()
    inside = (w < 1) & (h < 1)                                          # not clipped
    area, ratio = (w * h)[inside], (w / h)[inside]
    assert area.min() >= 0.08 - 1e-6 and area.max() <= 1 + 1e-6
    assert ratio.min() >= 3 / 4 - 1e-5 and ratio.max() <= 4 / 3 + 1e-5
    assert 0.45 < float((w * h).mean()) < 0.6          # U(0.08, 1) has mean 0.54, before clipping


def test_the_loader_crops_and_resizes_on_the_device(tmp_path):
    write_image_folder(tmp_path, n_train=8, n_val=2)
    data = load_dataset(f"imagefolder:{tmp_path}", image_size=12, device="cpu")
    loader = DeviceLoader(*data.train, batch_size=8, augment="resized-crop+flip", seed=0)
    batches = list(loader)
    assert len(batches) == 2
    for x, _ in batches:
        assert x.shape == (8, 3, 12, 12) and 0 <= x.min() and x.max() <= 1
    originals = {tuple(img.flatten().tolist()) for img in data.train[0]}
    assert not any(tuple(img.flatten().tolist()) in originals for img in batches[0][0])


def test_errors_name_what_is_missing(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nowhere'}")
    (tmp_path / "a" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DatasetUnavailableError, match="no val/"):
        load_dataset(f"imagefolder:{tmp_path / 'a'}")
    (tmp_path / "a" / "val" / "cat").mkdir(parents=True)
    with pytest.raises(DatasetUnavailableError, match="holds no images"):
        load_dataset(f"imagefolder:{tmp_path / 'a'}")
    (tmp_path / "b" / "train").mkdir(parents=True)
    (tmp_path / "b" / "val").mkdir()
    with pytest.raises(DatasetUnavailableError, match="no class folders"):
        load_dataset(f"imagefolder:{tmp_path / 'b'}")


def test_malformed_folders_are_refused(tmp_path):
    write_image_folder(tmp_path / "c", n_train=2, n_val=1)
    (tmp_path / "c" / "val" / "dog").mkdir()
    with pytest.raises(ValueError, match="classes that .* lacks: dog"):
        load_dataset(f"imagefolder:{tmp_path / 'c'}")
    write_image_folder(tmp_path / "d", n_train=2, n_val=1)
    (tmp_path / "d" / "train" / "red" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot decode .*broken.png"):
        load_dataset(f"imagefolder:{tmp_path / 'd'}")
    with pytest.raises(ValueError, match="image_size"):
        load_dataset(f"imagefolder:{tmp_path / 'd'}", image_size=2)
