"""Dataset files checked before use, and an image folder decoded once into a cached tensor file.

Nothing here knows a dataset: the expected classes and image shape come in as arguments.
"""
import hashlib
import math
import os
import shutil
import struct
import sys

import torch

from lab.errors import DataError
from lab.files import WriteError, remove_debris, save_atomic


def try_download(make, data_dir):
    """torchvision's download, or None when the network (or the host) is not reachable. A failed
    download leaves nothing behind: what it made in `data_dir` (an empty MNIST/raw/ tree, a
    partial archive) is removed, and `data_dir` itself if it was not there before."""
    existed = os.path.isdir(data_dir)
    before = set(os.listdir(data_dir)) if existed else set()
    try:
        return make(download=True)
    except Exception:  # no network: urllib, socket and checksum errors all land here
        made = set(os.listdir(data_dir)) - before if os.path.isdir(data_dir) else set()
        for name in [""] if not existed else sorted(made):
            path = os.path.join(data_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.lexists(path):
                os.remove(path)
        return None


def lab_copy(data_dir):
    """The last resort a data error names: the copies only our lab machines have."""
    return f"(on our lab machines: ../shared/datasets/install.sh {data_dir})"


IDX_UBYTE = 0x08  # the idx format's type code of unsigned bytes


def check_idx(path):
    """Raise DataError naming `path` unless it is a whole idx file of unsigned bytes."""
    remedy = f"delete it to download it again or put a good copy there {lab_copy('<data-dir>')}"
    with open(path, "rb") as f:
        header = f.read(4)
        if len(header) < 4 or header[:3] != bytes([0, 0, IDX_UBYTE]) or header[3] not in (1, 3):
            raise DataError(f"{path} is not an MNIST idx file (empty or wrong header); {remedy}")
        dims = struct.unpack(f">{header[3]}I", f.read(4 * header[3]).ljust(4 * header[3], b"\0"))
    expected = 4 + 4 * len(dims) + math.prod(dims)
    if os.path.getsize(path) != expected:
        raise DataError(f"{path} has {os.path.getsize(path)} bytes where its header says {expected} "
                        f"(truncated?); {remedy}")


def arrays_problem(arrays, shape, n_classes, sizes=None):
    """What is wrong with image arrays (x, y, ...) pairs, None if nothing: uint8 images of
    `shape`, int64 labels of `n_classes` classes, one per image (`sizes`: the counts)."""
    if not isinstance(arrays, (tuple, list)) or len(arrays) % 2 or not all(isinstance(a, torch.Tensor)
                                                                            for a in arrays):
        return "no (images, labels) tensors"
    for i, (x, y) in enumerate(zip(arrays[::2], arrays[1::2])):
        if x.dtype != torch.uint8 or tuple(x.shape[1:]) != tuple(shape):
            return f"images of {x.dtype} {tuple(x.shape)}, not uint8 (N, {', '.join(map(str, shape))})"
        if y.dtype != torch.int64 or y.dim() != 1 or len(y) != len(x):
            return f"labels of {y.dtype} {tuple(y.shape)}, not one int64 label per image"
        if len(y) and not 0 <= int(y.min()) <= int(y.max()) < n_classes:
            return f"labels from {int(y.min())} to {int(y.max())}, outside 0..{n_classes - 1}"
        if sizes is not None and len(y) != sizes[i]:
            return f"{len(y)} images where the folder has {sizes[i]}"
    return None


def arrays_signature(*tensors):
    """A short digest of CPU tensors' bytes: which data a run was trained on, for its record, so
    a run resumed on other data (another --data-dir) is refused rather than mixed."""
    digest = hashlib.blake2b(digest_size=8)
    for t in tensors:
        digest.update(str((t.dtype, tuple(t.shape))).encode())
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()


def list_image_folder(root, classes):
    """[(path, label)] of an ImageFolder split whose class folders are `classes`."""
    if not os.path.isdir(root):
        raise DataError(f"{root} is not a folder")
    present = {d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))}
    missing = [c for c in classes if c not in present]
    if missing:
        raise DataError(f"{root} lacks the class folder(s) {', '.join(missing)}")
    items = []
    for label, cls in enumerate(classes):
        folder = os.path.join(root, cls)
        # hidden files (.DS_Store, ._* of macOS, editors' backups) are not images of the set
        files = [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if not f.startswith(".")]
        if not files:
            raise DataError(f"the class folder {folder} holds no images: a split without a class would "
                            "train or test without it; put its images back (e.g. re-unpack the dataset)")
        items += [(path, label) for path in files]
    return items


def shown(path):
    """A path as a message can print it, even one whose name is not UTF-8 (its bytes replaced)."""
    return os.fsencode(path).decode(errors="replace")


def read_image(path, mode="RGB"):
    """(uint8 array, True if it was 16-bit) of an image file in `mode` ('RGB': (H, W, 3), 'L':
    (H, W)): the one image reader of every script, every mode and bit depth read the same way
    (16-bit grey by its high byte: PIL's convert would clip it to 255). A FIFO or folder, an
    unreadable file, 32-bit pixels or a decompression bomb is a DataError naming the file."""
    import numpy as np
    from PIL import Image
    if os.path.exists(path) and not os.path.isfile(path):
        raise DataError(f"{shown(path)} is not a regular file (a folder, FIFO or device)")
    try:
        with Image.open(path) as im:
            if im.mode in ("I", "F"):
                raise DataError(f"image {shown(path)} has 32-bit pixels (mode {im.mode}), which have no "
                                "faithful 8-bit form; save it as an 8-bit image")
            if im.mode.startswith("I;16"):
                grey = (np.array(im).astype(np.uint16) >> 8).astype(np.uint8)
                return (grey if mode == "L" else np.repeat(grey[..., None], 3, axis=2)), True
            return np.array(im.convert(mode)), False
    except Image.DecompressionBombError:
        raise DataError(f"image {shown(path)} has more pixels than PIL opens safely (a decompression bomb?); "
                        "give a smaller image")
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"cannot read image {shown(path)}: {type(e).__name__}")


def decode_images(items, desc, shape):
    """uint8 (N, *shape) images and int64 labels of [(path, label)], every mode and bit depth
    read the same way (read_image); an unreadable image is one line naming it."""
    from tqdm import tqdm

    x = torch.empty((len(items),) + tuple(shape), dtype=torch.uint8)
    converted = []
    for i, (path, _) in enumerate(tqdm(items, desc=desc, unit="img", leave=False)):
        array, was_16bit = read_image(path, "RGB")
        if was_16bit:
            converted.append(path)
        img = torch.from_numpy(array).permute(2, 0, 1)
        if tuple(img.shape) != tuple(shape):
            raise DataError(f"image {shown(path)} has shape {tuple(img.shape)}, expected {tuple(shape)}")
        x[i] = img
    if converted:
        print(f"note: {len(converted)} 16-bit grey image(s), e.g. {shown(converted[0])}, converted to 8-bit "
              "RGB by their high byte", file=sys.stderr)
    y = torch.tensor([label for _, label in items], dtype=torch.int64)
    return x, y


def folder_signature(items):
    """A digest of every file's name, label, size, modification and status-change times: the
    decoded cache is used only if no image was added, removed, replaced or edited since it was
    written. The status-change time (ctime) is the one a user cannot set back: an image replaced
    with its old mtime restored still changes it (a copy of the folder does too: one decoding)."""
    digest = hashlib.sha256()
    for path, label in items:
        st = os.stat(path)
        # surrogateescape: a file name that is not UTF-8 is still a name (its bytes)
        digest.update(f"{os.path.basename(path)}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\n"
                      .encode(errors="surrogateescape"))
    return digest.hexdigest()


def image_folder_arrays(root, classes, shape, cache_name):
    """(train_x, train_y, test_x, test_y) of an ImageFolder copy with train/ and test/, decoded
    once; later calls read the cached uint8 tensors (`cache_name` in `root`) in seconds."""
    splits = {s: list_image_folder(os.path.join(root, s), classes) for s in ("train", "test")}
    cache = os.path.join(root, cache_name)
    remove_debris(root)  # a killed writer's cache-sized temporary file, even when the cache is good
    key = {s: folder_signature(items) for s, items in splits.items()}
    sizes = [len(splits["train"]), len(splits["test"])]
    if os.path.exists(cache):
        try:
            cached = torch.load(cache, weights_only=True)
            if cached["key"] == key and arrays_problem(cached["arrays"], shape, len(classes), sizes) is None:
                return tuple(cached["arrays"])
        except Exception:
            pass  # an unreadable, stale or foreign cache is rebuilt below
    arrays = (decode_images(splits["train"], "decoding train", shape)
              + decode_images(splits["test"], "decoding test", shape))
    _write_cache({"key": key, "arrays": arrays}, cache)
    return arrays


def _write_cache(obj, cache):
    """Write the decoded cache whole or not at all: it only saves decoding next time, so a
    read-only folder or a full disk is a note, not an error. Its temporary file carries the
    writer's process id, so a concurrent writer's file is never taken for debris."""
    try:
        save_atomic(obj, cache)
    except WriteError as e:
        print(f"note: could not write the decoded-image cache ({e}); going on without it (the images are "
              "decoded again next time)", file=sys.stderr)
