"""Datasets as tensors in memory on the device, seeded splits, batches by slicing.

Each dataset is decoded once into a tensor; a training epoch is a seeded permutation
sliced into batches, and augmentation is a batched tensor op. No DataLoader, no
per-sample transform in the training loop.
"""
import os
from dataclasses import dataclass

import torch

from lab import datafiles
from lab.errors import DataError

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# SHA-256 of the published MNIST label files (train, test): labels that are not these (shuffled,
# edited) are no MNIST run, whatever the files are called
MNIST_LABELS_SHA256 = ("65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                       "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2")
MNIST_VAL_SIZE = 5_000
MNIST_IMAGE_SHAPE = (28, 28)

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
CIFAR10_VAL_SIZE = 5_000
CIFAR10_JPEG_DIR = "cifar10-jpeg"   # the ImageFolder copy made by ../shared/datasets/install.sh
CIFAR10_CACHE = "decoded_uint8.pt"  # the decoded images, beside an ImageFolder copy
CIFAR10_OFFICIAL_DIR = "cifar-10-batches-py"  # torchvision's own format
CIFAR10_IMAGE_SHAPE = (3, 32, 32)
CROP_PADDING = 4

SPLIT_SEED = 0  # one validation set shared by every run, whatever its own seed


def image_tensor(path, mode="RGB"):
    """An image file as a uint8 tensor, (H, W, 3) in RGB, (H, W) in "L" (grey), through the one
    image reader of every script (lab.datafiles.read_image: a file that is no image, or an image
    too large, is a one-line DataError naming it)."""
    return torch.from_numpy(datafiles.read_image(path, mode)[0])


@dataclass
class Split:
    x: torch.Tensor  # (N, ...) inputs: normalized float (MNIST) or uint8 images (CIFAR-10)
    y: torch.Tensor  # (N,) int64 labels

    def __len__(self):
        return self.y.shape[0]


@dataclass
class Dataset:
    train: Split
    val: Split
    test: Split
    source: str       # what the numbers were computed on, e.g. "CIFAR-10 (JPEG copy)"
    classes: tuple
    signature: str = ""  # a digest of the loaded images and labels (datafiles.arrays_signature)


def split_indices(n, n_val, seed=SPLIT_SEED):
    """A seeded random split of range(n) into (train, val) index tensors."""
    if not 0 < n_val < n:
        raise ValueError(f"validation size {n_val} must be between 0 and {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:], perm[:n_val]


def _split(x, y, n_val, split_seed):
    try:
        train_idx, val_idx = split_indices(len(y), n_val, split_seed)
    except ValueError as e:
        raise DataError(str(e))
    return Split(x[train_idx], y[train_idx]), Split(x[val_idx], y[val_idx])


# ----------------------------------------------------------------------------- MNIST


def load_mnist(data_dir, device, n_val=MNIST_VAL_SIZE, split_seed=SPLIT_SEED):
    """MNIST as flat normalized float tensors (N, 784) on `device`, with a seeded val split."""
    from torchvision.datasets import MNIST

    def make(train, download=False):
        return MNIST(data_dir, train=train, download=download)

    raw = os.path.join(data_dir, "MNIST", "raw")
    present = [os.path.join(raw, f) for f in MNIST_FILES if os.path.exists(os.path.join(raw, f))]
    for path in present:  # files that are there but broken: say which, never "not found"
        datafiles.check_idx(path)
    if len(present) == len(MNIST_FILES):
        train, test = make(True), make(False)
    else:
        train = datafiles.try_download(lambda download: make(True, download), data_dir)
        test = datafiles.try_download(lambda download: make(False, download), data_dir)
        if train is None or test is None:
            raise DataError(f"MNIST not found in {raw} and torchvision could not download it (no network?): "
                            f"rerun with a network to download it there, or put its four files there "
                            f"({', '.join(MNIST_FILES)}) {datafiles.lab_copy(data_dir)}")

    def tensors(ds):
        if tuple(ds.data.shape[1:]) != MNIST_IMAGE_SHAPE or len(ds.targets) != len(ds.data) or (
                len(ds.targets) and not 0 <= int(ds.targets.min()) <= int(ds.targets.max()) <= 9):
            raise DataError(f"the MNIST files in {raw} hold {tuple(ds.data.shape)} images and labels "
                            f"outside 0..9 or of another count; delete them to download MNIST again, or put "
                            f"a good copy there {datafiles.lab_copy(data_dir)}")
        return normalize_mnist(ds.data.to(device)).flatten(1), ds.targets.to(device)

    x, y = tensors(train)
    train_split, val_split = _split(x, y, n_val, split_seed)
    signature = datafiles.arrays_signature(train.data, train.targets, test.data, test.targets)
    return Dataset(train_split, val_split, Split(*tensors(test)), mnist_source(train.targets, test.targets),
                   tuple(str(i) for i in range(10)), signature)


def mnist_source(train_labels, test_labels):
    """'MNIST', or what the files are when a full-size copy's labels are not MNIST's (their label
    files, rebuilt from the labels, are not the published ones): a run's record says it."""
    import hashlib
    import struct
    digests = tuple(hashlib.sha256(struct.pack(">II", 2049, len(y)) + y.to(torch.uint8).numpy().tobytes())
                    .hexdigest() for y in (train_labels, test_labels))
    full_size = (len(train_labels), len(test_labels)) == (60_000, 10_000)
    return "MNIST-format files whose labels are not MNIST's" if full_size and digests != MNIST_LABELS_SHA256 \
        else "MNIST"


def normalize_mnist(images):
    """uint8 images (any shape) -> the float inputs of the MNIST networks."""
    return (images.float() / 255 - MNIST_MEAN) / MNIST_STD


def mnist_images(x):
    """The uint8 (N, 28, 28) images of flat normalized MNIST inputs (the inverse of load_mnist's)."""
    pixels = ((x * MNIST_STD + MNIST_MEAN) * 255).round().clamp(0, 255)
    return pixels.to(torch.uint8).view(-1, *MNIST_IMAGE_SHAPE)


# ----------------------------------------------------------------------------- CIFAR-10

def _cifar_official(data_dir, name="CIFAR10"):
    """((train_x, train_y, test_x, test_y) uint8 NCHW, class names) from torchvision's CIFAR10
    (or CIFAR100) format, or None if its folder is not in `data_dir`."""
    import torchvision.datasets

    dataset = getattr(torchvision.datasets, name)
    folder = os.path.join(data_dir, dataset.base_folder)
    if not os.path.exists(folder):
        return None
    try:
        train, test = dataset(data_dir, train=True), dataset(data_dir, train=False)
    except Exception as e:  # torchvision's checksum failure, or a file that does not unpickle
        raise DataError(f"{folder} is corrupt or incomplete ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:60] if str(e) else ''}); delete it and download or "
                        f"unpack {name} again")
    return _cifar_arrays(train, folder) + _cifar_arrays(test, folder), tuple(train.classes)


def _cifar_arrays(ds, folder):
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> NCHW
    y = torch.tensor(ds.targets, dtype=torch.int64)
    problem = datafiles.arrays_problem((x, y), CIFAR10_IMAGE_SHAPE, len(ds.classes))
    if problem:
        raise DataError(f"the files in {folder} hold {problem}; delete {folder} and unpack or download "
                        "it again")
    return x, y


def load_cifar10(data_dir, device, n_val=CIFAR10_VAL_SIZE, split_seed=SPLIT_SEED, train_subset=0):
    """CIFAR-10 as uint8 NCHW tensors on `device`, with a seeded validation split; with
    `train_subset`, only the first that many images of the (shuffled) training split.

    Looks for torchvision's own files in `data_dir`, then for an ImageFolder copy in
    `data_dir` itself or in `data_dir/cifar10-jpeg`, then tries torchvision's download.
    """
    arrays, source = (_cifar_official(data_dir) or (None,))[0], "CIFAR-10"
    if arrays is None:
        for root in (data_dir, os.path.join(data_dir, CIFAR10_JPEG_DIR)):
            if os.path.isdir(os.path.join(root, "train")):
                arrays = datafiles.image_folder_arrays(root, CIFAR10_CLASSES, CIFAR10_IMAGE_SHAPE,
                                                       CIFAR10_CACHE)
                source = "CIFAR-10 (JPEG copy)"
                break
    if arrays is None:
        from torchvision.datasets import CIFAR10
        if datafiles.try_download(lambda download: CIFAR10(data_dir, train=True, download=download),
                                  data_dir):
            arrays, source = _cifar_official(data_dir)[0], "CIFAR-10"
    if arrays is None:
        jpeg_dir = os.path.join(data_dir, CIFAR10_JPEG_DIR)
        raise DataError(f"CIFAR-10 not found in {data_dir} and torchvision could not download it (no "
                        f"network?): rerun with a network to download it there, or bring a copy: "
                        f"torchvision's cifar-10-batches-py/, or images in "
                        f"{jpeg_dir}/{{train,test}}/<class>/ {datafiles.lab_copy(data_dir)}")
    return _cifar_dataset(arrays, device, n_val, split_seed, train_subset, source, CIFAR10_CLASSES)


def load_cifar100(data_dir, device, n_val=CIFAR10_VAL_SIZE, split_seed=SPLIT_SEED, train_subset=0):
    """CIFAR-100 (its 100 fine labels) from torchvision's own files in `data_dir`, else its
    download, as load_cifar10 gives CIFAR-10."""
    from torchvision.datasets import CIFAR100
    found = _cifar_official(data_dir, "CIFAR100")
    if found is None and datafiles.try_download(lambda download: CIFAR100(data_dir, download=download),
                                                data_dir):
        found = _cifar_official(data_dir, "CIFAR100")
    if found is None:
        raise DataError(f"CIFAR-100 not found in {data_dir} (looked for {CIFAR100.base_folder}/) and it "
                        "could not be downloaded; download it where there is a network (torchvision's "
                        f"CIFAR100('{data_dir}', download=True)) and copy {CIFAR100.base_folder}/ there")
    arrays, classes = found
    return _cifar_dataset(arrays, device, n_val, split_seed, train_subset, "CIFAR-100", classes)


def _cifar_dataset(arrays, device, n_val, split_seed, train_subset, source, classes):
    signature = datafiles.arrays_signature(*arrays)
    train_x, train_y, test_x, test_y = (a.to(device) for a in arrays)
    train_split, val_split = _split(train_x, train_y, n_val, split_seed)
    if train_subset:
        if train_subset > len(train_split):
            raise DataError(f"a training subset of {train_subset} exceeds the {len(train_split)} training "
                            "images")
        train_split = Split(train_split.x[:train_subset], train_split.y[:train_subset])
    return Dataset(train_split, val_split, Split(test_x, test_y), source, classes, signature)


def normalize_images(x, mean=CIFAR10_MEAN, std=CIFAR10_STD):
    """uint8 (B, C, H, W) -> normalized float (B, C, H, W)."""
    mean = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x.float() / 255 - mean) / std


def cifar_transforms(generator, memory_format=torch.channels_last, size=None, mean=CIFAR10_MEAN,
                     std=CIFAR10_STD):
    """(train, eval) batch transforms of Exercise 1.3: uint8 -> normalized float in
    `memory_format`, the training one after a seeded random crop and flip; with `size`, the
    images then upsampled (bilinear) to size x size, as a pretrained network may want them."""
    def prepare(x):
        x = normalize_images(x, mean, std)
        if size is not None and size != x.shape[-1]:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return x.contiguous(memory_format=memory_format)

    def train_transform(x):
        return prepare(random_crop_flip(x, generator))
    return train_transform, prepare


def random_crop_flip(x, generator, padding=CROP_PADDING):
    """Batched augmentation: a `padding`-pixel padded random crop and a random horizontal flip.

    x: (B, C, H, W) of any dtype -> same shape; each image gets its own shift and flip.
    """
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    # drawn on the CPU generator, so a seed gives the same augmentation on every device
    shift = torch.randint(0, 2 * padding + 1, (2, b, 1), generator=generator).to(x.device)
    rows = torch.arange(h, device=x.device) + shift[0]        # (B, H)
    cols = torch.arange(w, device=x.device) + shift[1]        # (B, W)
    flip = (torch.rand(b, 1, generator=generator) < 0.5).to(x.device)
    cols = torch.where(flip, cols.flip(1), cols)              # a flip is a reversed column order
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------- batches

def epoch_order(n, generator, device):
    """A seeded permutation of range(n) on `device` (drawn on the CPU, so it is the same everywhere)."""
    return torch.randperm(n, generator=generator).to(device)


def batches(split, batch_size, order=None, transform=None):
    """Yield (x, y) batches of `split`, in `order` if given (a permutation), else as stored.

    `transform` maps an input batch to what the model takes (augmentation, normalization).
    """
    n = len(split)
    for start in range(0, n, batch_size):
        if order is None:  # a slice is a view: no copy
            x, y = split.x[start:start + batch_size], split.y[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]
            x, y = split.x[idx], split.y[idx]
        yield (x if transform is None else transform(x)), y
