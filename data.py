"""Datasets as tensors in memory on the device, seeded splits, batches by slicing.

Each dataset is decoded once into a tensor; a training epoch is a seeded permutation
sliced into batches, and augmentation is a batched tensor op. No DataLoader, no
per-sample transform in the training loop.
"""
import hashlib
import io
import math
import os
import shutil
import struct
import sys
import tempfile
from dataclasses import dataclass

import torch

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
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


class DataError(Exception):
    """The data could not be found or read; the message says what and where."""


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


def _try_download(make, data_dir):
    """torchvision's download, or None when the network (or the host) is not reachable."""
    try:
        return make(download=True)
    except Exception:  # no network: urllib, socket and checksum errors all land here
        return None


# ----------------------------------------------------------------------------- MNIST

IDX_UBYTE = 0x08  # the idx format's type code of unsigned bytes


def check_idx(path):
    """Raise DataError naming `path` unless it is a whole idx file of unsigned bytes."""
    remedy = "re-unpack MNIST, e.g. ../shared/datasets/install.sh <data-dir>, or delete it to download again"
    with open(path, "rb") as f:
        header = f.read(4)
        if len(header) < 4 or header[:3] != bytes([0, 0, IDX_UBYTE]) or header[3] not in (1, 3):
            raise DataError(f"{path} is not an MNIST idx file (empty or wrong header); {remedy}")
        dims = struct.unpack(f">{header[3]}I", f.read(4 * header[3]).ljust(4 * header[3], b"\0"))
    expected = 4 + 4 * len(dims) + math.prod(dims)
    if os.path.getsize(path) != expected:
        raise DataError(f"{path} has {os.path.getsize(path)} bytes where its header says {expected} "
                        f"(truncated?); {remedy}")


def load_mnist(data_dir, device, n_val=MNIST_VAL_SIZE, split_seed=SPLIT_SEED):
    """MNIST as flat normalized float tensors (N, 784) on `device`, with a seeded val split."""
    from torchvision.datasets import MNIST

    def make(train, download=False):
        return MNIST(data_dir, train=train, download=download)

    raw = os.path.join(data_dir, "MNIST", "raw")
    present = [os.path.join(raw, f) for f in MNIST_FILES if os.path.exists(os.path.join(raw, f))]
    for path in present:  # files that are there but broken: say which, never "not found"
        check_idx(path)
    if len(present) == len(MNIST_FILES):
        train, test = make(True), make(False)
    else:
        existed = os.path.isdir(data_dir)
        train = _try_download(lambda download: make(True, download), data_dir)
        test = _try_download(lambda download: make(False, download), data_dir)
        if train is None or test is None:
            if not existed:  # a failed download leaves no empty MNIST/raw tree behind
                shutil.rmtree(data_dir, ignore_errors=True)
            raise DataError(f"MNIST not found in {raw} (looked for {', '.join(MNIST_FILES)}) "
                            "and it could not be downloaded; unpack a local copy there, e.g. "
                            f"../shared/datasets/install.sh {data_dir}")

    def tensors(ds):
        if tuple(ds.data.shape[1:]) != MNIST_IMAGE_SHAPE or len(ds.targets) != len(ds.data) or (
                len(ds.targets) and not 0 <= int(ds.targets.min()) <= int(ds.targets.max()) <= 9):
            raise DataError(f"the MNIST files in {raw} hold {tuple(ds.data.shape)} images and labels "
                            f"outside 0..9 or of another count; re-unpack MNIST, e.g. "
                            f"../shared/datasets/install.sh {data_dir}")
        return normalize_mnist(ds.data.to(device)).flatten(1), ds.targets.to(device)

    x, y = tensors(train)
    train_split, val_split = _split(x, y, n_val, split_seed)
    return Dataset(train_split, val_split, Split(*tensors(test)), "MNIST",
                   tuple(str(i) for i in range(10)))


def normalize_mnist(images):
    """uint8 images (any shape) -> the float inputs of the MNIST networks."""
    return (images.float() / 255 - MNIST_MEAN) / MNIST_STD


def mnist_images(x):
    """The uint8 (N, 28, 28) images of flat normalized MNIST inputs (the inverse of load_mnist's)."""
    pixels = ((x * MNIST_STD + MNIST_MEAN) * 255).round().clamp(0, 255)
    return pixels.to(torch.uint8).view(-1, *MNIST_IMAGE_SHAPE)


# ----------------------------------------------------------------------------- CIFAR-10

def _cifar_official(data_dir):
    """(train_x, train_y, test_x, test_y) uint8 NCHW from torchvision's CIFAR10 format, or None."""
    from torchvision.datasets import CIFAR10

    def make(train, download=False):
        return CIFAR10(data_dir, train=train, download=download)

    folder = os.path.join(data_dir, CIFAR10_OFFICIAL_DIR)
    if not os.path.exists(folder):
        return None
    try:
        train, test = make(True), make(False)
    except Exception as e:  # torchvision's checksum failure, or a file that does not unpickle
        raise DataError(f"{folder} is corrupt or incomplete ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:60] if str(e) else ''}); delete it and download or "
                        "unpack CIFAR-10 again")
    return _cifar_arrays(train) + _cifar_arrays(test)


def _cifar_arrays(ds):
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> NCHW
    y = torch.tensor(ds.targets, dtype=torch.int64)
    problem = _arrays_problem((x, y))
    if problem:
        raise DataError(f"the CIFAR-10 files in {ds.root} hold {problem}; delete cifar-10-batches-py/ there "
                        "and unpack or download it again")
    return x, y


def _arrays_problem(arrays, sizes=None):
    """What is wrong with CIFAR-10 arrays (x, y, ...) pairs, None if nothing: uint8 images of
    CIFAR10_IMAGE_SHAPE, int64 labels of the 10 classes, one per image (`sizes`: the counts)."""
    if not isinstance(arrays, (tuple, list)) or len(arrays) % 2 or not all(isinstance(a, torch.Tensor)
                                                                            for a in arrays):
        return "no (images, labels) tensors"
    for i, (x, y) in enumerate(zip(arrays[::2], arrays[1::2])):
        if x.dtype != torch.uint8 or tuple(x.shape[1:]) != CIFAR10_IMAGE_SHAPE:
            return f"images of {x.dtype} {tuple(x.shape)}, not uint8 (N, 3, 32, 32)"
        if y.dtype != torch.int64 or y.dim() != 1 or len(y) != len(x):
            return f"labels of {y.dtype} {tuple(y.shape)}, not one int64 label per image"
        if len(y) and not 0 <= int(y.min()) <= int(y.max()) < len(CIFAR10_CLASSES):
            return f"labels from {int(y.min())} to {int(y.max())}, outside 0..{len(CIFAR10_CLASSES) - 1}"
        if sizes is not None and len(y) != sizes[i]:
            return f"{len(y)} images where the folder has {sizes[i]}"
    return None


def _list_image_folder(root):
    """[(path, label)] of an ImageFolder split whose class folders are CIFAR-10's classes."""
    if not os.path.isdir(root):
        raise DataError(f"{root} is not a folder")
    present = {d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))}
    missing = [c for c in CIFAR10_CLASSES if c not in present]
    if missing:
        raise DataError(f"{root} lacks the class folder(s) {', '.join(missing)}")
    items = []
    for label, cls in enumerate(CIFAR10_CLASSES):
        folder = os.path.join(root, cls)
        # hidden files (.DS_Store, ._* of macOS, editors' backups) are not images of the set
        files = [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if not f.startswith(".")]
        if not files:
            raise DataError(f"the class folder {folder} holds no images: a split without a class would "
                            "train or test without it; put its images back (e.g. re-unpack the dataset)")
        items += [(path, label) for path in files]
    return items


def _decode_images(items, desc):
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    x = torch.empty((len(items),) + CIFAR10_IMAGE_SHAPE, dtype=torch.uint8)
    converted = []
    for i, (path, _) in enumerate(tqdm(items, desc=desc, unit="img", leave=False)):
        try:
            with Image.open(path) as im:
                if im.mode.startswith("I;16"):  # 16-bit grey: convert("RGB") would clip it to 255
                    grey = np.array(im).astype(np.uint16) >> 8
                    img = torch.from_numpy(grey.astype(np.uint8)).expand(3, *grey.shape).contiguous()
                    converted.append(path)
                elif im.mode in ("I", "F"):
                    raise DataError(f"image {path} has 32-bit pixels (mode {im.mode}), which have no "
                                    "faithful 8-bit form; save it as an 8-bit image")
                else:
                    img = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"cannot read image {path}: {type(e).__name__}")
        if tuple(img.shape) != CIFAR10_IMAGE_SHAPE:
            raise DataError(f"image {path} has shape {tuple(img.shape)}, expected {CIFAR10_IMAGE_SHAPE}")
        x[i] = img
    if converted:
        print(f"note: {len(converted)} 16-bit grey image(s), e.g. {converted[0]}, converted to 8-bit RGB "
              "by their high byte", file=sys.stderr)
    y = torch.tensor([label for _, label in items], dtype=torch.int64)
    return x, y


def _folder_signature(items):
    """A digest of every file's name, label, size and modification time: the decoded cache is
    used only if no image was added, removed, replaced or edited since it was written."""
    digest = hashlib.sha256()
    for path, label in items:
        st = os.stat(path)
        digest.update(f"{os.path.basename(path)}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _cifar_image_folder(root):
    """Decode an ImageFolder copy once; later runs read the cached uint8 tensors in seconds."""
    splits = {s: _list_image_folder(os.path.join(root, s)) for s in ("train", "test")}
    cache = os.path.join(root, CIFAR10_CACHE)
    key = {s: _folder_signature(items) for s, items in splits.items()}
    sizes = [len(splits["train"]), len(splits["test"])]
    if os.path.exists(cache):
        try:
            cached = torch.load(cache, weights_only=True)
            if cached["key"] == key and _arrays_problem(cached["arrays"], sizes) is None:
                return tuple(cached["arrays"])
        except Exception:
            pass  # an unreadable, stale or foreign cache is rebuilt below
    arrays = (_decode_images(splits["train"], "decoding train")
              + _decode_images(splits["test"], "decoding test"))
    _write_cache({"key": key, "arrays": arrays}, cache)
    return arrays


CACHE_TMP_PREFIX = ".tmp-decoded-"  # then the writer's process id: .gitignore covers .tmp-*


def _remove_stale_temporaries(folder):
    """Delete the cache's temporary files whose writer is gone (killed mid-write); a live
    process's file is its own to finish."""
    for name in os.listdir(folder):
        if not name.startswith(CACHE_TMP_PREFIX):
            continue
        pid = name[len(CACHE_TMP_PREFIX):].split("-")[0]
        try:
            os.kill(int(pid), 0)
            continue  # its writer still runs
        except (ValueError, ProcessLookupError):
            pass
        except PermissionError:
            continue  # another user's live process
        try:
            os.remove(os.path.join(folder, name))
        except OSError:
            pass


def _write_cache(obj, cache):
    """Write the decoded cache whole (a temporary file, then a rename) or not at all: it only
    saves decoding next time, so a read-only folder or a full disk is a note, not an error."""
    folder = os.path.dirname(cache)
    _remove_stale_temporaries(folder)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{CACHE_TMP_PREFIX}{os.getpid()}-")
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getbuffer())
        os.replace(tmp, cache)
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else e
        print(f"note: could not write the decoded-image cache {cache} ({reason}); going on without it "
              "(the images are decoded again next time)", file=sys.stderr)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def load_cifar10(data_dir, device, n_val=CIFAR10_VAL_SIZE, split_seed=SPLIT_SEED):
    """CIFAR-10 as uint8 NCHW tensors on `device`, with a seeded validation split.

    Looks for torchvision's own files in `data_dir`, then for an ImageFolder copy in
    `data_dir` itself or in `data_dir/cifar10-jpeg`, then tries torchvision's download.
    """
    arrays, source = _cifar_official(data_dir), "CIFAR-10"
    if arrays is None:
        for root in (data_dir, os.path.join(data_dir, CIFAR10_JPEG_DIR)):
            if os.path.isdir(os.path.join(root, "train")):
                arrays, source = _cifar_image_folder(root), "CIFAR-10 (JPEG copy)"
                break
    if arrays is None:
        from torchvision.datasets import CIFAR10
        existed = os.path.isdir(data_dir)
        os.makedirs(data_dir, exist_ok=True)
        if _try_download(lambda download: CIFAR10(data_dir, train=True, download=download), data_dir):
            arrays, source = _cifar_official(data_dir), "CIFAR-10"
        elif not existed:  # a failed download leaves no empty folder behind
            shutil.rmtree(data_dir, ignore_errors=True)
    if arrays is None:
        jpeg_dir = os.path.join(data_dir, CIFAR10_JPEG_DIR)
        raise DataError(f"CIFAR-10 not found in {data_dir} (looked for cifar-10-batches-py/ and "
                        f"an ImageFolder copy {jpeg_dir}/{{train,test}}/<class>/) and it could not "
                        f"be downloaded; e.g. ../shared/datasets/install.sh {data_dir}")
    train_x, train_y, test_x, test_y = (a.to(device) for a in arrays)
    train_split, val_split = _split(train_x, train_y, n_val, split_seed)
    return Dataset(train_split, val_split, Split(test_x, test_y), source, CIFAR10_CLASSES)


def normalize_images(x, mean=CIFAR10_MEAN, std=CIFAR10_STD):
    """uint8 (B, C, H, W) -> normalized float (B, C, H, W)."""
    mean = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x.float() / 255 - mean) / std


def cifar_transforms(generator, memory_format=torch.channels_last):
    """(train, eval) batch transforms of Exercise 1.3: uint8 -> normalized float in
    `memory_format`, the training one after a seeded random crop and flip."""
    def train_transform(x):
        return normalize_images(random_crop_flip(x, generator)).contiguous(memory_format=memory_format)

    def eval_transform(x):
        return normalize_images(x).contiguous(memory_format=memory_format)
    return train_transform, eval_transform


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
