"""Digits on a canvas: seeded benchmark canvases, windows to fine-tune on, detections from the
score maps of a fully-convolutional classifier, and average precision.

Boxes are (x1, y1, x2, y2) in pixels, torchvision's convention. A digit's true box is the
28x28 frame of its MNIST image (the digit is centred in it), so a window of the classifier
and a true box have the same size, and IoU 0.5 allows a shift of up to 9 pixels in one direction.

Average precision is PASCAL VOC's all-points AP (VOC 2010 onwards): the area under the
precision-recall curve after precision is made monotone (each point takes the best precision
at any higher recall). A detection is a true positive when the true box of its class with the
highest IoU in its canvas has IoU >= the threshold and was not matched by a higher-scoring
detection; every other detection is a false positive.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MAX_PLACEMENT_TRIES = 100  # random positions tried per digit before the canvas starts over
MAX_RESTARTS = 100         # canvases started over before the digits go on a jittered grid
NEAR_WINDOWS = 2           # fine-tuning windows per digit at each of two ranges of shifts


@dataclass
class Canvases:
    images: torch.Tensor  # (N, H, W) uint8, white digits on black as in MNIST
    boxes: list           # N tensors (k, 4) float, the true boxes
    labels: list          # N tensors (k,) int64, their digits

    def __len__(self):
        return self.images.shape[0]


def capacity(size, digit):
    """How many digit frames a canvas of `size` (H, W) holds without overlap (on a grid)."""
    return (size[0] // digit[0]) * (size[1] // digit[1])


def _grid_positions(k, size, digit, generator):
    """k positions in distinct cells of the grid of frames, each jittered inside its cell."""
    rows, cols = size[0] // digit[0], size[1] // digit[1]
    cells = torch.randperm(rows * cols, generator=generator)[:k].tolist()
    cell_h, cell_w = size[0] // rows, size[1] // cols
    out = []
    for cell in cells:
        r, c = divmod(cell, cols)
        dy = int(torch.randint(cell_h - digit[0] + 1, (1,), generator=generator))
        dx = int(torch.randint(cell_w - digit[1] + 1, (1,), generator=generator))
        out.append((r * cell_h + dy, c * cell_w + dx))
    return out


def _positions(k, size, digit, generator):
    """k top-left corners of non-overlapping frames, uniformly at random (sequential rejection),
    falling back to a jittered grid in the rare canvas where random placement jams."""
    h, w = size[0] - digit[0] + 1, size[1] - digit[1] + 1
    for _ in range(MAX_RESTARTS):
        placed = []
        for _ in range(k):
            for _ in range(MAX_PLACEMENT_TRIES):
                y = int(torch.randint(h, (1,), generator=generator))
                x = int(torch.randint(w, (1,), generator=generator))
                if all(abs(y - py) >= digit[0] or abs(x - px) >= digit[1] for py, px in placed):
                    placed.append((y, x))
                    break
            else:
                break
        if len(placed) == k:
            return placed
    return _grid_positions(k, size, digit, generator)


def make_canvases(images, labels, n, size, max_digits, generator):
    """`n` canvases of `size` (H, W), each with 0..max_digits digits (uniformly many) drawn from
    `images` (M, h, w) uint8 with `labels` (M,), at random non-overlapping positions."""
    digit = tuple(images.shape[1:])
    if max_digits > capacity(size, digit):
        raise ValueError(f"{max_digits} digits of {digit[0]}x{digit[1]} do not fit a {size[0]}x{size[1]} "
                         f"canvas without overlap (at most {capacity(size, digit)})")
    canvases = torch.zeros(n, *size, dtype=torch.uint8)
    all_boxes, all_labels = [], []
    for i in range(n):
        k = int(torch.randint(max_digits + 1, (1,), generator=generator))
        picks = torch.randint(len(images), (k,), generator=generator)
        boxes = []
        for (y, x), j in zip(_positions(k, size, digit, generator), picks.tolist()):
            canvases[i, y:y + digit[0], x:x + digit[1]] = images[j]
            boxes.append((x, y, x + digit[1], y + digit[0]))
        all_boxes.append(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        all_labels.append(labels[picks].to(torch.int64).cpu())
    return Canvases(canvases, all_boxes, all_labels)


def window_boxes(map_shape, window):
    """The box of every cell of a (h, w) score map: cell (i, j) is the window at row i, column j."""
    rows, cols = torch.meshgrid(torch.arange(map_shape[0]), torch.arange(map_shape[1]), indexing="ij")
    x1, y1 = cols.flatten().float(), rows.flatten().float()
    return torch.stack([x1, y1, x1 + window[1], y1 + window[0]], dim=1)  # (h*w, 4)


def training_windows(canvases, window, per_canvas, positive_iou, negative_iou, background, generator):
    """Windows cut from `canvases` to teach a classifier to say "no digit". Per digit, two windows
    shifted by a few pixels (so labelled with its class) and two shifted by up to half a window
    (mostly near misses); per canvas, `per_canvas` windows anywhere. Each window is labelled by
    its highest IoU with a true box: the digit's class when >= `positive_iou`, `background` when
    < `negative_iou` (empty space, parts and pairs of digits), left out in between.
    Returns (x (N, h, w) uint8, y (N,) int64)."""
    from torchvision.ops import box_iou  # here, so --help need not load torchvision
    h, w = window
    xs, ys = [], []
    for image, boxes, labels in zip(canvases.images, canvases.boxes, canvases.labels):
        size = image.shape
        corners = [torch.stack([torch.randint(size[1] - w + 1, (per_canvas,), generator=generator),
                                torch.randint(size[0] - h + 1, (per_canvas,), generator=generator)], 1)]
        for shift in (_max_shift(window, positive_iou), min(h, w) // 2):
            for _ in range(NEAR_WINDOWS):
                moved = boxes[:, :2].long() + torch.randint(-shift, shift + 1, boxes[:, :2].shape,
                                                            generator=generator)
                corners.append(torch.stack([moved[:, 0].clamp(0, size[1] - w),
                                            moved[:, 1].clamp(0, size[0] - h)], 1))
        corners = torch.cat(corners)
        cut = torch.cat([corners, corners + torch.tensor([w, h])], 1).float()
        if len(boxes):
            best, which = box_iou(cut, boxes).max(1)
            label = torch.where(best >= positive_iou, labels[which], background)
        else:
            best, label = torch.zeros(len(cut)), torch.full((len(cut),), background)
        keep = (best >= positive_iou) | (best < negative_iou)
        for (x, y), lab in zip(corners[keep].tolist(), label[keep].tolist()):
            xs.append(image[y:y + h, x:x + w])
            ys.append(lab)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


def _max_shift(window, iou):
    """The largest shift along one axis that keeps two `window` boxes at IoU >= `iou`."""
    h, w = window
    shift = 0
    while shift < w and (h * (w - shift - 1)) / (2 * h * w - h * (w - shift - 1)) >= iou:
        shift += 1
    return shift


@torch.no_grad()
def detect(score_maps, window, digits, min_score, nms_iou, max_detections):
    """Detections of a batch of (B, C, h, w) logit maps, C = `digits` or `digits` + 1 (the last a
    background class): per location the most probable digit and its softmax probability, those
    scoring >= `min_score`, non-maximum suppression across classes (digits never overlap), the
    `max_detections` best. Returns B tuples (boxes (k, 4), scores (k,), labels (k,)), on the CPU."""
    from torchvision.ops import nms  # here, so --help need not load torchvision
    probs = F.softmax(score_maps.float(), dim=1)[:, :digits]
    scores, labels = probs.max(1)                              # (B, h, w)
    boxes = window_boxes(score_maps.shape[-2:], window).to(score_maps.device)
    out = []
    for s, lab in zip(scores.flatten(1), labels.flatten(1)):
        keep = (s >= min_score).nonzero()[:, 0]
        keep = keep[nms(boxes[keep], s[keep], nms_iou)][:max_detections]
        out.append((boxes[keep].cpu(), s[keep].cpu(), lab[keep].cpu()))
    return out


def match(detections, canvases, classes, iou):
    """Per class: (scores, true-positive flags) of all its detections, best score first, and its
    number of true boxes, matched the VOC way (see the module's docstring)."""
    from torchvision.ops import box_iou  # here, so --help need not load torchvision
    per_class = {c: ([], [], 0) for c in classes}
    for (boxes, scores, labels), true_boxes, true_labels in zip(detections, canvases.boxes, canvases.labels):
        for c in classes:
            mine, truth = labels == c, true_boxes[true_labels == c]
            s, f, n = per_class[c]
            order = scores[mine].argsort(descending=True, stable=True)
            ious = box_iou(boxes[mine][order], truth) if len(truth) else torch.zeros(len(order), 0)
            taken = torch.zeros(len(truth), dtype=torch.bool)
            for row, score in zip(ious, scores[mine][order].tolist()):
                hit = False
                if len(truth):
                    best, j = row.max(0)
                    hit = bool(best >= iou) and not bool(taken[j])
                    if hit:
                        taken[j] = True
                s.append(score)
                f.append(hit)
            per_class[c] = (s, f, n + len(truth))
    out = {}
    for c, (s, f, n) in per_class.items():
        s, f = torch.tensor(s, dtype=torch.float64), torch.tensor(f, dtype=torch.bool)
        order = s.argsort(descending=True, stable=True)
        out[c] = (s[order], f[order], n)
    return out


def average_precision(hits, n_true):
    """VOC all-points AP of detections sorted best first (`hits`: their true-positive flags)
    against `n_true` true boxes; nan when there is no true box."""
    if n_true == 0:
        return float("nan")
    tp = hits.double().cumsum(0)
    recall = torch.cat([torch.zeros(1), tp / n_true, torch.ones(1)]).double()
    precision = torch.cat([torch.zeros(1), tp / torch.arange(1, len(hits) + 1), torch.zeros(1)]).double()
    precision = precision.flip(0).cummax(0).values.flip(0)  # the best precision at any higher recall
    return float(((recall[1:] - recall[:-1]) * precision[1:]).sum())


def summarize(matched, threshold):
    """{'ap': {class: AP}, 'map', 'precision', 'recall'}: AP per class and their mean, and the
    precision and recall of the detections scoring >= `threshold`, over all classes."""
    ap = {c: average_precision(hits, n) for c, (_, hits, n) in matched.items()}
    kept = sum(int((s >= threshold).sum()) for s, _, _ in matched.values())
    right = sum(int(h[s >= threshold].sum()) for s, h, _ in matched.values())
    n_true = sum(n for _, _, n in matched.values())
    finite = [v for v in ap.values() if v == v]
    nan = float("nan")
    return {"ap": ap, "map": sum(finite) / len(finite) if finite else nan,
            "precision": right / kept if kept else nan, "recall": right / n_true if n_true else nan,
            "detections": kept, "true_boxes": n_true}
