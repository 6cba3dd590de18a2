"""Exercise 2.2: a trained MNIST classifier made fully convolutional, and a digit detector.

    python ex2_fcn.py                       # fine-tune, benchmark both detectors, table and figure
    python ex2_fcn.py --plot-only           # redraw the table and figure from the saved results
    python ex2_fcn.py --detect IMAGE        # digits in an image of your own (white on black)

Surgery (no retraining): the MLP's 784->w input layer becomes a 28x28 convolution and every
later Linear a 1x1 convolution, so on an HxW canvas the network gives a (10, H-27, W-27) map
of the classifier's logits on every 28x28 window. Two detectors are measured on the same
seeded canvases of MNIST *test* digits: (a) that map alone (most probable digit per window,
a score threshold, non-maximum suppression), and (b) the same network fine-tuned with an 11th
"background" class on windows cut from canvases of MNIST *training* digits.
"""
import argparse
import math
import os
import time

import torch

from data import MNIST_IMAGE_SHAPE, Dataset, Split, image_tensor, load_mnist, mnist_images, normalize_mnist
from detection import (Canvases, capacity, detect, make_canvases, match, summarize, training_windows)
from models import MLP, ConvMLP
from report import format_mean_std, save_figure
from training import Recipe, fit
from utils import get_device, hardware, run_meta, seed_everything
from lab import (ArgumentParser, DataError, UserError, count, kinds, load_model, outputs, prepared_run,
                 run_cli, runs, set_threads)

PROG = "ex2_fcn.py"
EXERCISE = "ex2_fcn"
INTERRUPTED = "the fine-tuning resumes from its last finished epoch when you rerun the command"
DIGITS = 10
BACKGROUND = DIGITS  # the 11th class of the fine-tuned detector
# a window is a digit's when IoU >= 0.7 with its box (a shift of at most 4 pixels), background
# when IoU < 0.5 with every box (it would not count as finding the digit); windows in between
# are left out of the fine-tuning
POSITIVE_IOU, NEGATIVE_IOU = 0.7, 0.5
EVAL_IOU = 0.5          # a detection is right at IoU >= 0.5 with a true box of its digit (VOC, COCO AP50)
MIN_SCORE = 0.05        # detections kept for the precision-recall curve (COCO's evaluation keeps >= 0.05)
MAX_DETECTIONS = 100    # per canvas, as COCO's maxDets
CANVAS_BATCH = 50       # canvases per forward pass of the benchmark
MAX_CANVAS = 1024       # the largest canvas side a flag may ask for
N_EXAMPLES = 3          # canvases in the figure
BENCHMARK_FILE = "benchmark.json"
# width-16 layers are too small to share between threads: the fine-tuning trains fastest on one
# (`python bench.py mlp` measures one against two). The detector's maps could use more, but a
# process has one thread count: the table's times are one thread's
THREADS = 1
DETECTORS = {"surgery": "(a) surgery alone", "finetuned": "(b) surgery + background class"}


def make_parser():
    p = ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("--classifier", default=None,
                   help="a best.pt of ex1_mlp.py to start from (default: the published MNIST MLP with "
                        "the best validation accuracy, in results/ex1_mlp)")
    p.add_argument("--canvas-size", type=kinds.count_flag(MAX_CANVAS), default=96, help="canvas side, pixels")
    p.add_argument("--max-digits", type=kinds.count_flag(MAX_CANVAS ** 2), default=5,
                   help="digits per canvas: 0 to this many, uniformly")
    p.add_argument("--canvases", type=kinds.IMAGES, default=1000,
                   help="benchmark canvases (MNIST test digits)")
    p.add_argument("--train-canvases", type=kinds.IMAGES, default=2000,
                   help="canvases of MNIST training digits the fine-tuning windows are cut from")
    p.add_argument("--val-canvases", type=kinds.IMAGES, default=500,
                   help="canvases of the classifier's validation digits (held out of its training): "
                        "they pick the fine-tuning epoch")
    p.add_argument("--windows-per-canvas", type=kinds.IMAGES, default=8,
                   help="random windows per canvas, besides one on each digit")
    p.add_argument("--epochs", type=kinds.EPOCHS, default=8, help="fine-tuning epochs")
    p.add_argument("--lr", type=kinds.LR, default=1e-3, help="Adam learning rate of the fine-tuning")
    p.add_argument("--batch-size", type=kinds.BATCH, default=128, help="windows per step")
    p.add_argument("--threshold", type=kinds.FRACTION, default=0.5,
                   help="operating score: the precision and recall reported are of detections above it")
    p.add_argument("--nms-iou", type=kinds.Number(float, 0, 1, open_low=True), default=0.3,
                   help="non-maximum suppression: a detection overlapping a better one by more is dropped")
    p.add_argument("--seeds", type=kinds.SEEDS, default=3,
                   help="runs 0..N-1, each with its own canvases and fine-tuning; the table shows their "
                        "mean ± std")
    p.add_device_flag()
    p.add_tensorboard_flag()
    p.add_argument("--data-dir", default="data", help="where MNIST is")
    p.add_output_flags(EXERCISE)
    p.add_argument("--force", action="store_true",
                   help="run a finished experiment again (its result is deleted)")
    p.add_argument("--detect", default=None, metavar="IMAGE",
                   help="print the digits the fine-tuned detector finds in this image (PNG or JPEG)")
    return p


def get_args(argv=None):
    p = make_parser()
    args = p.parse_args(argv)
    size, digit = (args.canvas_size,) * 2, MNIST_IMAGE_SHAPE
    if args.canvas_size < digit[0]:
        p.error(f"--canvas-size {args.canvas_size} is smaller than a digit ({digit[0]}x{digit[1]}): "
                f"give at least {digit[0]}")
    if args.max_digits > capacity(size, digit):
        p.error(f"--max-digits {args.max_digits}: at most {capacity(size, digit)} digits of "
                f"{digit[0]}x{digit[1]} fit a {args.canvas_size}x{args.canvas_size} canvas without overlap")
    if args.detect and args.plot_only:
        p.error("--detect and --plot-only are two different commands: give one")
    return args


# ----------------------------------------------------------------------------- the classifier

def published_classifiers():
    """The published ex1_mlp.py runs with a checkpoint: [(best validation accuracy, path)]."""
    published = runs.published_dir("ex1_mlp")
    return [(record["best_val_acc"], path) for record, path in runs.checkpointed_runs(published)]


def classifier_path(args):
    """--classifier, else the published MLP that validation ranks first (never the test set)."""
    if args.classifier:
        return args.classifier
    found = published_classifiers()
    if not found:
        raise UserError(f"no published MLP checkpoint in {runs.published_dir('ex1_mlp')}; train one with "
                        "`python ex1_mlp.py --depth 32 --residual` and pass its best.pt with --classifier")
    return max(found)[1]


def load_classifier(path, device, classes=DIGITS):
    """(MLP, checkpoint) of an MNIST MLP with `classes` outputs: an ex1_mlp.py classifier (10,
    with the validation split it was selected on) or a fine-tuned detector of this script (11).
    Anything else is refused in one line."""
    remedy = ("pass a best.pt of ex1_mlp.py with --classifier" if classes == DIGITS else
              f"delete {os.path.dirname(path)} and rerun `python {PROG}` to fine-tune it again")
    config_fields = {"val_size": kinds.IMAGES} if classes == DIGITS else {}
    model, ckpt = load_model(path, device, MLP, remedy, config_fields=config_fields)
    kwargs = ckpt["arch"]["kwargs"]
    if kwargs.get("in_features") != math.prod(MNIST_IMAGE_SHAPE) or kwargs.get("num_classes") != classes:
        raise UserError(f"{path} is not an MNIST classifier of {classes} classes "
                        f"({kwargs.get('in_features')} inputs, {kwargs.get('num_classes')} classes); "
                        f"{remedy}")
    return model, ckpt


def load_detector(folder, device):
    """The fine-tuned MLP (digits and background) of a run folder."""
    return load_classifier(os.path.join(folder, runs.CHECKPOINT_FILE), device, DIGITS + 1)[0]


def classifier_id(path):
    """Names the starting network in the run's config: its run folder, as ex1_mlp.py named it."""
    return os.path.basename(os.path.dirname(os.path.abspath(path)))


# ----------------------------------------------------------------------------- the experiment

def run_config(args, classifier, seed):
    keys = ("canvas_size", "max_digits", "canvases", "train_canvases", "val_canvases", "windows_per_canvas",
            "epochs", "lr", "batch_size", "threshold", "nms_iou")
    return {"classifier": classifier, **{k: getattr(args, k) for k in keys}, "seed": seed}


def run_name(config):
    return runs.folder_name("detector", config)


def benchmark_canvases(data, config, generator):
    """(train, val, test) canvases from the three MNIST splits, in that order from one generator."""
    size = (config["canvas_size"],) * 2
    return [make_canvases(mnist_images(split.x).cpu(), split.y.cpu(), n, size, config["max_digits"],
                          generator)
            for split, n in ((data.train, config["train_canvases"]), (data.val, config["val_canvases"]),
                             (data.test, config["canvases"]))]


def windows(canvases, config, generator, device):
    x, y = training_windows(canvases, MNIST_IMAGE_SHAPE, config["windows_per_canvas"], POSITIVE_IOU,
                            NEGATIVE_IOU, BACKGROUND, generator)
    return Split(normalize_mnist(x.to(device)).flatten(1), y.to(device))


def detector_arch(source_arch):
    """The classifier's architecture with an 11th output, background."""
    return {"name": "MLP", "kwargs": {**source_arch["kwargs"], "num_classes": DIGITS + 1}}


def fine_tune(source, config, splits, run, generator, device):
    """The classifier with an 11th output, background, trained on windows in the RunFolder `run`
    (not yet entered): (outcome, record)."""
    model = MLP(**run.arch["kwargs"]).to(device)
    state = source.state_dict()
    # the ten digit outputs start as the classifier's; background starts at logit 0
    w, b = state.pop("classifier.weight"), state.pop("classifier.bias")
    model.load_state_dict(state, strict=False)
    with torch.no_grad():
        model.classifier.weight.zero_()[:DIGITS] = w
        model.classifier.bias.zero_()[:DIGITS] = b
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    data = Dataset(*splits, "windows of MNIST canvases", tuple(map(str, range(DIGITS))) + ("background",))
    recipe = Recipe(optimizer, config["epochs"], config["batch_size"], generator)
    with run:
        return fit(model, data, recipe, run)


def score_maps(conv_model, images):
    """Yields the (B, C, H-27, W-27) logit maps of uint8 canvases (N, H, W), CANVAS_BATCH at a time."""
    with torch.no_grad():
        for i in range(0, len(images), CANVAS_BATCH):
            yield conv_model(normalize_mnist(images[i:i + CANVAS_BATCH])[:, None])


def run_detector(conv_model, canvases, config, device):
    """(detections, milliseconds per canvas): maps, scores and NMS, timed end to end."""
    images = canvases.images.to(device)
    next(score_maps(conv_model, images[:1]))  # warm-up: first-call allocations are not timed
    started = time.perf_counter()
    found = []
    for maps in score_maps(conv_model, images):
        found += detect(maps, MNIST_IMAGE_SHAPE, DIGITS, MIN_SCORE, config["nms_iou"], MAX_DETECTIONS)
    return found, 1000 * (time.perf_counter() - started) / len(images)


def benchmark(detectors, canvases, config, device):
    """{name: summary + ms per canvas} of each detector on the test canvases."""
    out = {}
    for name, model in detectors.items():
        conv = ConvMLP(model, MNIST_IMAGE_SHAPE).to(device).eval()
        found, ms = run_detector(conv, canvases, config, device)
        summary = summarize(match(found, canvases, range(DIGITS), EVAL_IOU), config["threshold"])
        out[name] = {**summary, "ap": [summary["ap"][c] for c in range(DIGITS)], "ms_per_canvas": ms}
        print(f"{DETECTORS[name]}: mAP@{EVAL_IOU} {summary['map']:.3f}, "
              f"precision {summary['precision']:.3f}, recall {summary['recall']:.3f} at score >= "
              f"{config['threshold']}, {ms:.2f} ms per canvas")
    return out


def read_grey(path, what, remedy):
    """An image file as a (H, W) uint8 tensor (data.image_tensor), or a one-line error naming it."""
    try:
        return image_tensor(path, "L")
    except DataError as e:
        raise UserError(f"{what}: {e}; {remedy}")


def examples_of(canvases):
    """The figure's first canvases, their true boxes and digits, saved in the benchmark: the
    figure is redrawn from them without MNIST."""
    return {"canvases": kinds.packed(canvases.images[:N_EXAMPLES]),
            "boxes": [b.tolist() for b in canvases.boxes[:N_EXAMPLES]],
            "labels": [lab.tolist() for lab in canvases.labels[:N_EXAMPLES]]}


MS = kinds.Number(float, 0, float("inf"), open_low=True)


def benchmark_schema(config):
    """The benchmark of a run of `config`: each detector's scores are fractions (or NaN), one AP per
    digit, a true box count no larger than the canvases can hold; the figure's example canvases."""
    boxes = kinds.Number(int, 0, config["canvases"] * config["max_digits"])
    score = kinds.Number(float, 0, 1, finite=False)  # NaN: nothing to score (detection.summarize)
    detections = kinds.count_flag(kinds.MAX_IMAGES * MAX_DETECTIONS, low=0)
    summary = {"map": score, "precision": score, "recall": score, "ms_per_canvas": MS,
               "ap": kinds.ListOf(score, DIGITS), "detections": detections, "true_boxes": boxes}
    k, side = min(N_EXAMPLES, config["canvases"]), config["canvas_size"]
    return {"hardware": str, "detectors": {name: summary for name in DETECTORS},
            "examples": {"canvases": kinds.Packed("uint8", (k, side, side)), "boxes": kinds.ListOf(list, k),
                         "labels": kinds.ListOf(list, k)}}


def _decoded_benchmark(content, config):
    if len({d["true_boxes"] for d in content["detectors"].values()}) > 1:
        raise ValueError("its detectors were measured on different canvases")
    examples = {**content["examples"], "canvases": kinds.unpacked(content["examples"]["canvases"])}
    return {**content, "config": config, "examples": examples}


def benchmark_of(folder, config, compute=None):
    """The benchmark saved in a run folder, checked whole (lab.outputs.computed_once), measured by
    compute() first if there is none yet; None if there is none and no `compute`."""
    path = os.path.join(folder, BENCHMARK_FILE)
    if compute is None and not os.path.exists(path):
        return None
    return outputs.computed_once(path, "detector benchmark", config, {}, benchmark_schema(config), compute,
                                 f"python {PROG} (with MNIST unpacked)",
                                 decode=lambda content: _decoded_benchmark(content, config))


def canvases_of(args, device, ckpt, config):
    """(MNIST's three splits as canvases, the generator they were drawn from, the run's meta)."""
    # the classifier's own validation split: digits it was never trained on
    data = load_mnist(args.data_dir, device, ckpt["config"]["val_size"])
    generator = seed_everything(config["seed"])
    canvases = benchmark_canvases(data, config, generator)
    return canvases, generator, run_meta(data, device)  # its data signature: no resume on other data


def train(config, source, source_arch, inputs, device, out_dir, tensorboard=None):
    """Fine-tune the classifier `source` into a detector on windows of the canvases `inputs`
    (canvases_of); returns (outcome, record) as training.fit does."""
    canvases, generator, meta = inputs
    splits = [windows(c, config, generator, device) for c in canvases]
    name = run_name(config)
    print(f"{name}: {len(splits[0])} training windows from {len(canvases[0])} canvases, {hardware(device)}")
    run = runs.RunFolder(os.path.join(out_dir, name), config, meta, detector_arch(source_arch), tensorboard)
    return fine_tune(source, config, splits, run, generator, device)


def measure_benchmark(source, folder, test_canvases, config, device):
    """Both detectors measured on the test canvases of a run (a fresh run, or one interrupted
    between its fine-tuning and its benchmark), with the figure's examples."""
    set_threads(device, THREADS)  # its times are those of one thread, as the training's
    tuned = load_detector(folder, device)
    return {"hardware": hardware(device), "examples": examples_of(test_canvases),
            "detectors": benchmark({"surgery": source, "finetuned": tuned}, test_canvases, config, device)}


# ----------------------------------------------------------------------------- table and figure

def make_table(saved, made_by):
    """Markdown: AP per digit, mAP, precision and recall at the operating score, time per canvas,
    each the mean ± std over the runs `saved` (their benchmarks, seed 0 first)."""
    config = saved[0]["config"]
    names = list(DETECTORS)

    def row(title, value, digits=3, bold=False):
        cells = [format_mean_std([value(b["detectors"][n]) for b in saved], digits) for n in names]
        return f"| {title} | " + " | ".join(f"**{c}**" if bold else c for c in cells) + " |"

    lines = ["| | " + " | ".join(DETECTORS[n] for n in names) + " |", "|---|" + "---:|" * len(names)]
    lines += [row(f"AP, digit {c}", lambda d, c=c: d["ap"][c]) for c in range(DIGITS)]
    lines.append(row(f"**mAP@{EVAL_IOU}**", lambda d: d["map"], bold=True))
    lines += [row(f"{key} at score >= {config['threshold']}", lambda d, key=key: d[key])
              for key in ("precision", "recall")]
    lines.append(row("detections at that score", lambda d: d["detections"], digits=0))
    lines.append(row("true boxes", lambda d: d["true_boxes"], digits=0))
    lines.append(row("ms per canvas", lambda d: d["ms_per_canvas"], digits=1))
    side = config["canvas_size"]
    runs = (f"Mean ± std over {count(len(saved), 'run')} (seeds 0-{len(saved) - 1}), each with"
            if len(saved) > 1 else "One run (seed 0), with")
    lines += ["", f"{runs} "
                  f"its own {config['canvases']:,} test canvases of {side}x{side} with 0 to "
                  f"{config['max_digits']} MNIST test digits and its own fine-tuning. AP: PASCAL VOC "
                  f"all-points, IoU >= {EVAL_IOU} with the digit's 28x28 frame; NMS at IoU "
                  f"{config['nms_iou']}. Classifier `{config['classifier']}`, fine-tuned "
                  f"{count(config['epochs'], 'epoch')} "
                  f"on windows of "
                  f"{config['train_canvases']:,} canvases of training digits. Time: maps, scores and NMS, "
                  f"batches of {CANVAS_BATCH}; {saved[0]['hardware']}. Made by `{made_by}`."]
    return "\n".join(lines) + "\n"


def _draw_boxes(ax, canvas, truth, found, threshold):
    ax.imshow(canvas.numpy(), cmap="gray", vmin=0, vmax=255)
    for x1, y1, x2, y2 in truth:
        ax.add_patch(_rect(x1, y1, x2, y2, "lime", "--"))
    boxes, scores, labels = found
    for (x1, y1, x2, y2), s, lab in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
        if s >= threshold:
            ax.add_patch(_rect(x1, y1, x2, y2, "red", "-"))
            ax.text(x1 + 1, y1 + 5, f"{lab} {s:.2f}", color="yellow", fontsize=6)


def _rect(x1, y1, x2, y2, color, ls):
    from matplotlib.patches import Rectangle
    # imshow puts pixel centres on integers: a box of pixels x1..x2-1 spans x1-0.5 .. x2-0.5
    return Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, color=color, ls=ls, lw=1)


def _show_map(ax, values, canvas_shape):
    """A (h, w) map of windows on the canvas: cell (i, j) at the centre of its window."""
    dy, dx = (MNIST_IMAGE_SHAPE[0] - 1) / 2, (MNIST_IMAGE_SHAPE[1] - 1) / 2
    h, w = values.shape
    shown = ax.imshow(values.numpy(), cmap="magma", vmin=0, vmax=1,
                      extent=(dx - 0.5, dx + w - 0.5, dy + h - 0.5, dy - 0.5))
    ax.set(xlim=(-0.5, canvas_shape[1] - 0.5), ylim=(canvas_shape[0] - 0.5, -0.5), facecolor="0.6")
    return shown


def plot(models, examples, saved, path):
    """Canvases with true (green, dashed) and predicted boxes (red) of both detectors beside their
    maps, then the per-class probability maps of the first canvas."""
    import matplotlib.pyplot as plt
    config = saved["config"]
    logits = {n: torch.cat(list(score_maps(ConvMLP(m, MNIST_IMAGE_SHAPE).eval(), examples)))
              for n, m in models.items()}
    found = {n: detect(v, MNIST_IMAGE_SHAPE, DIGITS, MIN_SCORE, config["nms_iou"], MAX_DETECTIONS)
             for n, v in logits.items()}
    maps = {n: torch.softmax(v, 1) for n, v in logits.items()}
    k, classes = len(examples), DIGITS + 1
    fig = plt.figure(figsize=(11, 2.6 * k + 2.6))
    grid = fig.add_gridspec(k + 2, classes, height_ratios=[2.4] * k + [1, 1], left=0.02, right=0.98,
                            top=0.97, bottom=0.13, hspace=0.35, wspace=0.15)
    span = [slice(0, 3), slice(3, 5), slice(5, 8), slice(8, 11)]
    for row in range(k):
        truth = saved["examples"]["boxes"][row]
        for col, name in enumerate(DETECTORS):
            ax = fig.add_subplot(grid[row, span[2 * col]])
            _draw_boxes(ax, examples[row], truth, found[name][row], config["threshold"])
            ax.set_title(f"{DETECTORS[name]}: boxes", fontsize=8)
            ax = fig.add_subplot(grid[row, span[2 * col + 1]])
            # the score a window's detection gets (its most probable digit's probability), drawn
            # at the window's centre so the map lies over the canvas
            shown = _show_map(ax, maps[name][row, :DIGITS].max(0).values, examples.shape[-2:])
            ax.set_title("score of the window centred here", fontsize=8)
        for ax in fig.axes[-4:]:
            ax.set(xticks=[], yticks=[])
    for r, name in enumerate(DETECTORS):
        for c in range(classes):
            ax = fig.add_subplot(grid[k + r, c])
            ax.set(xticks=[], yticks=[])
            if c < maps[name].shape[1]:
                _show_map(ax, maps[name][0, c], examples.shape[-2:])
                ax.set_title(str(c) if c < DIGITS else "background", fontsize=7)
            else:
                ax.axis("off")
        row_label = {"surgery": "(a) alone", "finetuned": "(b) fine-tuned"}[name]
        fig.axes[-classes].set_ylabel(row_label, fontsize=7)
    bar = fig.colorbar(shown, cax=fig.add_axes((0.35, 0.075, 0.3, 0.01)), orientation="horizontal")
    bar.set_label("score, probability (grey: no window is centred there)", fontsize=7)
    bar.ax.xaxis.set_label_position("top")
    bar.ax.tick_params(labelsize=7)
    save_figure(fig, f"Top: canvases of MNIST test digits (seed {config['seed']}); green dashed: true "
                     f"28x28 frames, red: detections at score >= {config['threshold']}. Bottom: per-class "
                     f"probability of each window, at its centre, first canvas. Classifier "
                     f"{config['classifier']}, fine-tuned on {saved['hardware']}.", path, caption_lines=2,
                layout=False)


def finished_runs(args, device):
    """([(folder, benchmark)] of seeds 0..N-1, classifier path): the runs of these settings,
    published or in --out-dir; an error naming the first one missing."""
    path = classifier_path(args)
    roots = runs.lookup_roots(args.out_dir, EXERCISE)
    out = []
    for seed in range(args.seeds):
        config = run_config(args, classifier_id(path), seed)
        record, folder = runs.find_finished(roots, run_name(config), config)
        saved = benchmark_of(folder, config) if record else None
        if saved is None:
            raise UserError(f"no finished run of these settings with seed {seed} in {' or '.join(roots)}; "
                            f"run `python {PROG}` with the same flags first")
        out.append((folder, saved))
    return out, path


WHERE_FLAGS = ("device", "tensorboard", "data_dir", "out_dir", "fig_dir", "force", "plot_only", "detect")


def results_command(args):
    """The command whose settings made a table: every flag that changes the numbers, none of where
    files go or how they were redrawn (e.g. `python ex2_fcn.py --seeds 5`)."""
    settings = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in WHERE_FLAGS})
    return outputs.command_line(PROG, {}, settings, get_args([]))


def make_outputs(args, device, found, classifier):
    """The table (all runs) and the figure (the first), from finished run folders."""
    published = all(runs.is_published(f, EXERCISE) for f, _ in found)
    fig_dir, publish = outputs.destination(args, get_args([]), os.path.join(args.out_dir, "figures"),
                                           inputs_published=published)
    folder, saved = found[0]
    models = {"surgery": load_classifier(classifier, device)[0].cpu(),
              "finetuned": load_detector(folder, device).cpu()}
    table = make_table([b for _, b in found], results_command(args))
    path = outputs.write_table(table, "ex2_fcn_table", fig_dir, publish)
    plot(models, saved["examples"]["canvases"], saved, os.path.join(fig_dir, "ex2_fcn_detections.png"))
    print(table)
    print(f"table and figure written to {fig_dir}/ (from {', '.join(f for f, _ in found)})")
    return path


def detect_image(args, device):
    """--detect: the fine-tuned detector of these settings (seed 0) on an image of the user's."""
    found, _ = finished_runs(args, device)
    folder, saved = found[0]
    image = read_grey(args.detect, "the image", "give a PNG or JPEG file of white digits on black")
    if min(image.shape) < MNIST_IMAGE_SHAPE[0]:
        raise UserError(f"{args.detect} is {image.shape[1]}x{image.shape[0]}: smaller than a digit "
                        f"({MNIST_IMAGE_SHAPE[0]}x{MNIST_IMAGE_SHAPE[1]})")
    model = ConvMLP(load_detector(folder, device), MNIST_IMAGE_SHAPE)
    found, ms = run_detector(model.to(device).eval(), Canvases(image[None], [], []), saved["config"], device)
    boxes, scores, labels = found[0]
    kept = scores >= args.threshold
    print(f"{args.detect}: {int(kept.sum())} digits at score >= {args.threshold} ({ms:.1f} ms)")
    for box, s, lab in zip(boxes[kept].tolist(), scores[kept].tolist(), labels[kept].tolist()):
        print(f"  digit {lab}  score {s:.3f}  box x {box[0]:.0f}-{box[2]:.0f}, y {box[1]:.0f}-{box[3]:.0f}")
    return found[0]


def main(args):
    device = get_device(args.device)
    if args.detect:
        return detect_image(args, device)
    if args.plot_only:
        found, classifier = finished_runs(args, device)
        return make_outputs(args, device, found, classifier)
    classifier = classifier_path(args)
    source, ckpt = load_classifier(classifier, device)
    found = []
    for seed in range(args.seeds):
        config = run_config(args, classifier_id(classifier), seed)
        record, folder, inputs = prepared_run(EXERCISE, run_name(config), config, args, device, THREADS,
                                              lambda a, d: canvases_of(a, d, ckpt, config))
        if record is None:
            _, record = train(config, source, ckpt["arch"], inputs, device, args.out_dir, args.tensorboard)
        if record["status"] != "complete":
            raise UserError(f"the fine-tuning in {folder} diverged; try a smaller --lr")
        saved = benchmark_of(folder, config, lambda: measure_benchmark(
            source, folder, (inputs or canvases_of(args, device, ckpt, config))[0][2], config, device))
        found.append((folder, saved))
    return make_outputs(args, device, found, classifier)


if __name__ == "__main__":
    run_cli(main, get_args(), PROG, INTERRUPTED)
