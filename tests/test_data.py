import pytest
import torch

from robust_nb.data import (
    DatasetUnavailableError,
    DeviceLoader,
    attack_subset,
    check_images,
    load_dataset,
    random_crop,
)


def test_mnist_5k_split_is_stratified_and_in_range(mnist):
    (xtr, ytr), (xte, yte) = mnist.train, mnist.test
    assert xtr.shape == (4000, 1, 28, 28) and xte.shape == (1000, 1, 28, 28)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    assert torch.equal(torch.bincount(yte), torch.full((10,), 100))
    assert torch.equal(torch.bincount(ytr), torch.full((10,), 400))
    assert 0 <= xtr.min() and xtr.max() <= 1 and xtr.max() == 1
    # mean/std are the train split's statistics
    assert mnist.mean[0] == pytest.approx(xtr.mean().item(), abs=1e-4)
    assert mnist.std[0] == pytest.approx(xtr.std().item(), abs=1e-4)
    assert mnist.classes == tuple("0123456789") and not mnist.flip


def test_splits_are_shuffled_so_any_prefix_covers_every_class(mnist):
    for _, labels in (mnist.train, mnist.test):
        assert len(set(labels[:100].tolist())) == 10


def test_split_is_deterministic(mnist):
    again = load_dataset("mnist-5k")
    assert torch.equal(again.test[0], mnist.test[0])


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError, match="unknown dataset 'cifar11'.*mnist-5k.*cifar10"):
        load_dataset("cifar11")


@pytest.mark.parametrize("name", ["cifar10", "mnist", "svhn"])
def test_missing_offline_dataset_says_what_to_do(name, tmp_path):
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset(name, root=tmp_path, download=False)
    msg = str(info.value)
    assert name in msg and str(tmp_path) in msg and "offline" in msg and "mnist-5k" in msg


def test_root_comes_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBUST_NB_DATA", str(tmp_path / "here"))
    with pytest.raises(DatasetUnavailableError, match="here"):
        load_dataset("cifar10", download=False)


def test_check_images_rejects_bad_input():
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        check_images(x[0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_images(x * 255)
    with pytest.raises(ValueError, match="one label per image"):
        check_images(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        check_images(x, torch.zeros(4))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_check_images_rejects_non_finite_values(bad):
    x = torch.rand(4, 3, 8, 8)
    x[1, 2, 3, 4] = bad
    with pytest.raises(ValueError, match="training images contain NaN or infinite.*nan_to_num"):
        check_images(x, name="training images")


def test_check_images_checks_label_values():
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    check_images(x, y, num_classes=4)
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\] for a model with 3 outputs, "
                                         r"got values in \[0, 3\]"):
        check_images(x, y, num_classes=3)
    with pytest.raises(ValueError, match="non-negative class indices, got a minimum of -2"):
        check_images(x, torch.tensor([0, -2, 1, 1]))
    with pytest.raises(ValueError, match="integer class indices"):
        check_images(x, y.bool())


def test_check_images_accepts_an_empty_batch():
    check_images(torch.rand(0, 3, 8, 8), torch.zeros(0, dtype=torch.long), num_classes=10)


def _balance(labels, num_classes=10):
    return torch.bincount(labels, minlength=num_classes)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("n", [1, 10, 95, 100, 1000])
def test_attack_subset_is_stratified_and_has_no_duplicates(mnist, n, seed):
    x, y = attack_subset(mnist, n, seed=seed)
    xt, yt = mnist.test
    assert x.shape == (n, 1, 28, 28) and y.shape == (n,)
    counts = _balance(y)
    assert counts.max() - counts.min() <= 1 and counts.sum() == n
    # Each chosen pair is a test image with its own label, and none is chosen twice.
    match = (x.flatten(1)[:, None] == xt.flatten(1)[None]).all(-1)       # (n, 1000)
    assert (match.sum(1) >= 1).all()
    rows = match.float().argmax(1)
    assert len(set(rows.tolist())) == n and torch.equal(yt[rows], y)
    # Every prefix is as balanced as possible too.
    for k in (10, n // 2, n - 1):
        if k > 0:
            prefix = _balance(y[:k])
            assert prefix.max() - prefix.min() <= 1


def test_attack_subset_is_deterministic_per_seed(mnist):
    a, b, c = (attack_subset(mnist.test, 50, seed=s) for s in (4, 4, 5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    d = attack_subset(mnist, 50, seed=4)                 # a Dataset means its test split
    assert torch.equal(a[0], d[0])


def test_attack_subset_shares_out_what_small_classes_lack():
    # 3 classes with 2, 10 and 30 images: 18 images -> 2 of the first, 8 of each other.
    y = torch.cat([torch.full((2,), 0), torch.full((10,), 1), torch.full((30,), 2)])
    x = torch.rand(len(y), 1, 4, 4)
    _, ys = attack_subset((x, y), 18, seed=0)
    assert _balance(ys, 3).tolist() == [2, 8, 8]
    _, ys = attack_subset((x, y), 42, seed=0)
    assert _balance(ys, 3).tolist() == [2, 10, 30]
    seen = set()
    for seed in range(8):                                  # which class gets the extra one varies
        counts = _balance(attack_subset((x, y), 15, seed=seed)[1], 3).tolist()
        assert counts[0] == 2 and sorted(counts[1:]) == [6, 7]
        seen.add(tuple(counts))
    assert seen == {(2, 6, 7), (2, 7, 6)}


def test_attack_subset_rejects_bad_arguments(mnist):
    for n in (0, -3, 1001, 2.5, True):
        with pytest.raises(ValueError, match=r"n must be an integer in \[1, 1000\]"):
            attack_subset(mnist, n)
    with pytest.raises(ValueError, match="Dataset.*pair"):
        attack_subset(mnist.test[0], 10)
    with pytest.raises(ValueError, match="one label per image"):
        attack_subset((mnist.test[0], mnist.test[1][:10]), 5)


def _loader(mnist, **kw):
    x, y = mnist.train
    return DeviceLoader(x[:1000], y[:1000], batch_size=96, **kw)


def test_every_sample_once_per_epoch(mnist):
    loader = _loader(mnist, seed=1)
    x, y = mnist.train
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == len(loader) == 11 and len(batches[-1][1]) == 1000 - 10 * 96
        seen = torch.cat([xb for xb, _ in batches])
        # same multiset of images: compare sorted per-image sums (no augmentation here)
        assert torch.equal(seen.sum((1, 2, 3)).sort().values, x[:1000].sum((1, 2, 3)).sort().values)
    assert len(_loader(mnist, drop_last=True)) == 10


def test_same_seed_same_batches_different_seed_different(mnist):
    a = [yb for _, yb in _loader(mnist, seed=5, augment="crop+flip")]
    b = [yb for _, yb in _loader(mnist, seed=5, augment="crop+flip")]
    c = [yb for _, yb in _loader(mnist, seed=6, augment="crop+flip")]
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not all(torch.equal(u, v) for u, v in zip(a, c, strict=True))


def test_state_dict_resumes_the_stream(mnist):
    loader = _loader(mnist, seed=2, augment="crop")
    list(loader)
    state = loader.state_dict()
    expected = [xb for xb, _ in loader]
    loader.load_state_dict(state)
    assert all(torch.equal(u, v) for u, v in zip(expected, (xb for xb, _ in loader), strict=True))


def test_random_crop_is_a_shift_of_the_padded_image():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2000, 1, 6, 6)
    out = random_crop(x, 2, g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    windows = padded.unfold(2, 6, 1).unfold(3, 6, 1)  # (N, 1, 5, 5, 6, 6): all 25 shifts
    match = (windows == out[:, :, None, None]).flatten(4).all(-1)[:, 0]  # (N, 5, 5)
    assert match.flatten(1).any(1).all()               # each output is one of the shifts
    dy = match.any(2).float().argmax(1)
    freq = torch.bincount(dy, minlength=5).float() / len(x)
    assert torch.allclose(freq, torch.full((5,), 0.2), atol=0.04)  # shifts are uniform


def test_flip_happens_half_the_time(mnist):
    x, y = mnist.train
    loader = DeviceLoader(x, y, batch_size=4000, shuffle=False, augment="flip", seed=0)
    out, _ = next(iter(loader))
    flipped = (out == x.flip(3)).flatten(1).all(1) & ~(out == x).flatten(1).all(1)
    assert 0.45 < flipped.float().mean() < 0.55


def test_loader_rejects_bad_arguments(mnist):
    x, y = mnist.train
    with pytest.raises(ValueError, match="unknown augment"):
        DeviceLoader(x, y, augment="rotate")
    with pytest.raises(ValueError, match="one label per image"):
        DeviceLoader(x, y[:10])
