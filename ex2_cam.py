"""Exercise 2.3: Class Activation Maps of the CIFAR-10 CNN and of ImageNet-trained CNNs.

    python ex2_cam.py cifar10                          # CAMs of the published residual-32 (seed 0)
    python ex2_cam.py cifar10 --checkpoint runs/ex1_cnn/<run>/best.pt --num-images 12
    python ex2_cam.py cifar10 --evaluate               # faithfulness: CAM vs Grad-CAM vs random
    python ex2_cam.py photos                           # ImageNet EfficientNet-Lite0 on real photos
    python ex2_cam.py photos --plot-only               # redraw them from results/ex2_cam/photos.json
    python ex2_cam.py photos my.jpg other.png          # your own photos (figure in runs/ex2_cam/)
    python ex2_cam.py imagenette                       # torchvision's ResNet-18 on Imagenette val
    python ex2_cam.py imagenette --weights resnet18.pth --data-dir data   # offline

CAM (Zhou et al. 2016) needs features -> global average pooling -> one linear layer:
the map of class c is sum_k w[c, k] A_k over the last feature maps A.
"""
import hashlib
import os
import shutil
from dataclasses import dataclass

import torch
from tqdm import tqdm

from cam import CAM, GradCAM, auc, deletion_insertion, drop_and_increase, random_maps, upsample_and_scale
from data import image_tensor, load_cifar10, normalize_images
from models import CifarResNet
from pretrained import (LITE_MEAN, LITE_STD, WEIGHTS_PACKAGE, WEIGHTS_SHA256, load_efficientnet_lite0,
                        load_resnet18)
from report import cnn_name, format_mean_std, save_figure
from training import CNN_CPU_EPOCHS
from utils import get_device, hardware
from lab import ArgumentParser, DataError, UserError, kinds, load_model, outputs, run_cli, runs

PROG = "ex2_cam.py"
CNN_RUNS = os.path.join("runs", "ex1_cnn")
SCRATCH_DIR = os.path.join("runs", "ex2_cam")  # figures of other checkpoints or settings
MAKE_CHECKPOINT = "python ex1_cnn.py --blocks 3 --residual --cpu --force"  # --force: the published run exists
# what Ctrl-C or SIGTERM leaves: every file is written whole, at once (a saved result may be there
# without its figure, which --plot-only then draws)
INTERRUPTED = "each file it wrote is whole; rerun the command to finish (--plot-only draws a saved result)"
MAX_FIGURE_IMAGES = 32  # a column per image: more would make a figure no screen shows
MAX_CLASSES = 1000      # ImageNet's; a CIFAR-10 network checks --class-index against its 10
MAX_STEPS = 1024        # deletion/insertion steps: one pixel each on CIFAR-10
# what the figure reads of the run a checkpoint comes from
CONFIG_FIELDS = {"val_size": kinds.IMAGES, "residual": bool, "blocks": kinds.IMAGES}
# the network explained by default (ex1_cnn.py --blocks 5 --residual --cpu): residual-56 is a
# little better on validation, but its maps have the same 8x8 resolution and the README's
# figure and faithfulness table were measured on this one (see the README, Exercise 2.3)
DEFAULT_RUN = {"residual": True, "blocks": 5, "seed": 0, "epochs": CNN_CPU_EPOCHS}
# Imagenette's ten WordNet ids, in torchvision's (sorted) label order, and their ImageNet-1k index
IMAGENETTE_TO_IMAGENET = {
    "n01440764": ("tench", 0), "n02102040": ("English springer", 217),
    "n02979186": ("cassette player", 482), "n03000684": ("chain saw", 491),
    "n03028079": ("church", 497), "n03394916": ("French horn", 566),
    "n03417042": ("garbage truck", 569), "n03425413": ("gas pump", 571),
    "n03445777": ("golf ball", 574), "n03888257": ("parachute", 701),
}
IMAGENETTE_SIZE = "160px"
IMAGENETTE_BATCH = 64
METHODS = ("CAM", "Grad-CAM", "random")
@dataclass(frozen=True)
class Photo:
    source: str
    classes: tuple   # the ImageNet-1k classes it shows (their probabilities go in the table)
    sha256: str      # of its decoded pixels: the photo this repository's results were computed from


# The photos of `photos`, pinned by their pixels
PHOTOS = {
    "grace_hopper": Photo("matplotlib sample data (grace_hopper.jpg)", (652,),  # military uniform
                          "e2d643579c66f50c6be6a52681b4769f7d9c4b4cb4b24fb622c9067dc268386e"),
    "chelsea": Photo("scikit-image skimage.data.chelsea()", (281, 282, 285),  # tabby, tiger, Egyptian cat
                     "9c717786308ef130d869e61afda7439c5a84e3624d7d1bc0500947db97a023f1"),
    "coffee": Photo("scikit-image skimage.data.coffee()", (967, 968),  # espresso, cup
                    "9b3e037f9cd32e3aa4673b24f51de4b8b0a6c6fc4c4f2c89d2dd5d63cc43e8f2"),
    "rocket": Photo("scikit-image skimage.data.rocket()", (657, 744),  # missile, projectile
                    "94bc01cd6c3812d001dc262b1fc2de79c32671282dd2a1043f7ac6e120b19f94"),
    "astronaut": Photo("scikit-image skimage.data.astronaut()", (812,),  # space shuttle (a person: no class)
                       "9d1263ba0e684c996ad8d59ebeeb479d2608e2d7bb09a217aafcb77f1c5f9533"),
}
PHOTO_SIZE = 224   # EfficientNet-Lite0's input
PHOTO_STEPS = 8    # deletion/insertion steps on the photos (224 * 224 / 8 pixels each)
PHOTO_DRAWS = 100  # random maps per photo: CAM is placed in their distribution, not against one draw
PHOTO_BATCH = 50   # random maps per forward batch
MAX_DRAWS = 10_000
TOP_K = 5


def make_parser():
    p = ArgumentParser(prog=PROG, description=__doc__)
    sub = p.add_subparsers(dest="dataset", metavar="{cifar10,photos,imagenette}", required=True,
                           parser_class=ArgumentParser)
    common = ArgumentParser(add_help=False)
    common.add_argument("--class-index", type=kinds.count_flag(MAX_CLASSES - 1, low=0), default=None,
                        help="explain this class for every image (default: the predicted class)")
    common.add_device_flag()
    common.add_argument("--fig-dir", default=None,
                        help=f"where figures and tables go (default: figures/ for the README's settings, "
                             f"else {SCRATCH_DIR})")
    sample = ArgumentParser(add_help=False)   # the modes that draw images from a dataset
    sample.add_argument("--num-images", type=kinds.count_flag(MAX_FIGURE_IMAGES), default=8,
                        help=f"images in the figure (at most {MAX_FIGURE_IMAGES})")
    sample.add_argument("--seed", type=kinds.SEED, default=0, help="picks the images")
    sample.add_argument("--data-dir", default="data", help="where the dataset is")
    c = sub.add_parser("cifar10", parents=[common, sample], help="the CNN trained by ex1_cnn.py on CIFAR-10")
    c.add_argument("--checkpoint", default=None,
                   help="a best.pt of ex1_cnn.py (default: the published residual-32, seed 0, of the "
                        "CPU-preset sweep in results/ex1_cnn, the network of the README's figure and table)")
    c.add_argument("--runs-dir", default=None,
                   help="use the residual run with the best validation accuracy among these ex1_cnn.py run "
                        f"folders instead (e.g. {CNN_RUNS})")
    c.add_argument("--evaluate", action="store_true",
                   help="deletion/insertion AUC, Average Drop, Increase in Confidence")
    c.add_argument("--eval-images", type=kinds.IMAGES, default=1000,
                   help="test images for --evaluate")
    c.add_argument("--steps", type=kinds.count_flag(MAX_STEPS), default=8,
                   help="deletion/insertion steps (1024 pixels / 8 = 128 per step on CIFAR-10)")
    c.add_argument("--plot-only", action="store_true",
                   help="redraw the figure (with --evaluate: the table and curves) from the saved maps and "
                        "measures (results/ex2_cam/ for the README's): no CIFAR-10 needed")
    add_photos_parser(sub.add_parser("photos", parents=[common],
                                     help="the ImageNet EfficientNet-Lite0 on five shipped photos, or yours"))
    i = sub.add_parser("imagenette", parents=[common, sample], help="torchvision's ImageNet ResNet-18")
    i.add_argument("--weights", default=None,
                   help="a local ResNet-18 state dict (default: torchvision's IMAGENET1K_V1, hub cache)")
    i.add_argument("--max-eval", type=kinds.count_flag(kinds.MAX_IMAGES, low=0), default=0,
                   help="images for the top-1 accuracy (0: all of Imagenette val)")
    return p


def add_photos_parser(ph):
    """The flags of `photos`: the five shipped photos take no dataset flags."""
    ph.add_argument("paths", nargs="*", metavar="PATH",
                    help="your own JPEG or PNG files, any size (default: the shipped photos); their "
                         f"figure and table go to {SCRATCH_DIR}/ or --fig-dir, never figures/")
    ph.add_argument("--steps", type=kinds.count_flag(MAX_STEPS), default=PHOTO_STEPS,
                    help="deletion/insertion steps over the 224x224 pixels")
    ph.add_argument("--draws", type=kinds.count_flag(MAX_DRAWS), default=PHOTO_DRAWS,
                    help="random maps per photo, the baseline CAM's deletion AUC is placed in")
    ph.add_argument("--seed", type=kinds.SEED, default=0, help="seeds the random maps")
    ph.add_argument("--plot-only", action="store_true",
                    help="redraw the table and figure from the saved result (results/ex2_cam/photos.json "
                         "for the shipped photos): no network is run")


def get_args(argv=None):
    return make_parser().parse_args(argv)


# ----------------------------------------------------------------------------- CIFAR-10

def find_checkpoint(runs_dir=None):
    """(best.pt path, why it was chosen). By default the published run of DEFAULT_RUN's settings
    (the README's figure and table, the same on every clone); with `runs_dir`, the residual run
    with the best validation accuracy there. The checkpoint is checked when it is loaded."""
    if runs_dir:
        residual = [(r["best_val_acc"], path) for r, path in runs.checkpointed_runs(runs_dir)
                    if r["config"].get("residual")]
        if not residual:
            raise UserError(f"no finished residual ex1_cnn.py run with a checkpoint in {runs_dir}; make one "
                            f"with `{MAKE_CHECKPOINT} --out-dir {runs_dir}` or pass --checkpoint")
        val, path = max(residual)
        return path, f"the residual run with the best validation accuracy ({val:.4f}) in {runs_dir}"
    root = runs.published_dir("ex1_cnn")
    for record, path in runs.checkpointed_runs(root):
        if all(record["config"].get(k) == v for k, v in DEFAULT_RUN.items()):
            return path, "the published residual-32, seed 0: the network of the README's figure and table"
    raise UserError(f"no published run with the settings {DEFAULT_RUN} in {root} (is the checkout "
                    "complete?); pass --checkpoint or --runs-dir")


def load_cnn(path, device):
    """The network of an ex1_cnn.py checkpoint, rebuilt from the description it carries."""
    remedy = f"pass a best.pt of ex1_cnn.py, or make one with `{MAKE_CHECKPOINT}`"
    model, ckpt = load_model(path, device, CifarResNet, remedy, config_fields=CONFIG_FIELDS,
                             fields={"val_acc": kinds.FRACTION})
    return model, ckpt


def denormalize(x, mean, std):
    """Normalized (B, 3, H, W) -> displayable (B, H, W, 3) in [0, 1]."""
    mean = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x * std + mean).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()


@dataclass
class CamPanel:
    """What a CAM figure shows of its images: (N, H, W, 3) pictures, (N, H, W) maps in [0, 1]."""
    images: object
    maps: object
    true: list
    pred: list
    explained: list   # the class each map explains
    names: object     # class index -> name
    true_maps: object = None  # the true class's maps, drawn where the prediction is wrong


def plot_cams(panel, title, caption, path):
    """A column per image: the image (true/predicted class), the CAM of the explained class,
    and the true class's CAM when the prediction is wrong."""
    import matplotlib.pyplot as plt
    images, maps, true, pred, explained, names, true_maps = (
        panel.images, panel.maps, panel.true, panel.pred, panel.explained, panel.names, panel.true_maps)
    n = len(images)
    fig, axes = plt.subplots(3, n, figsize=(1.9 * n, 8.2), squeeze=False)
    for j in range(n):
        ok = true[j] == pred[j]
        axes[0, j].imshow(images[j])
        axes[0, j].set_title(f"true: {names[true[j]]}\npred: {names[pred[j]]}", fontsize=7,
                             color="green" if ok else "red")
        axes[1, j].imshow(images[j])
        shown = axes[1, j].imshow(maps[j], cmap="jet", alpha=0.5, vmin=0, vmax=1)
        axes[1, j].set_title(f"CAM: {names[explained[j]]}", fontsize=7)
        if not ok and true_maps is not None:
            axes[2, j].imshow(images[j])
            axes[2, j].imshow(true_maps[j], cmap="jet", alpha=0.5, vmin=0, vmax=1)
            axes[2, j].set_title(f"CAM: {names[true[j]]} (true)", fontsize=7)
        for ax in axes[:, j]:
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.15, 1, 1))
    bar = fig.colorbar(shown, cax=fig.add_axes((0.3, 0.1, 0.4, 0.015)), orientation="horizontal")
    bar.set_label("CAM, scaled to [0, 1] per image (drawn at half opacity over it)", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    save_figure(fig, caption, path, layout=False)


def explain(model, x, y, class_index):
    """CAMs for the predicted (or chosen) class, and for the true class of each image."""
    with CAM(model, model.features, model.classifier) as cam:
        maps, logits, classes = cam(x, class_index)
        true_maps, _, _ = cam(x, y)
    return maps.cpu(), logits.argmax(1).cpu(), classes.cpu(), true_maps.cpu()


def relative(path):
    """`path` as the README shows it: relative to the repository when inside it."""
    rel = os.path.relpath(os.path.abspath(path), os.path.dirname(os.path.abspath(__file__)))
    return path if rel.startswith("..") else rel




def figure_dir(args, checkpoint):
    """figures/ (and the README) only for the README's settings: the default choice among
    the published checkpoints and default flags; else SCRATCH_DIR or --fig-dir."""
    published = runs.is_published(checkpoint, "ex1_cnn")
    readme = get_args([args.dataset] + (["--evaluate"] if args.evaluate else []))
    return outputs.destination(args, readme, SCRATCH_DIR, inputs_published=published)


def check_class_index(args, num_classes):
    if args.class_index is not None and not 0 <= args.class_index < num_classes:
        raise UserError(f"--class-index {args.class_index} is out of range 0..{num_classes - 1}")


def chosen_checkpoint(args):
    """The checkpoint `args` ask for, with a line saying which one and why."""
    path, why = (args.checkpoint, "--checkpoint") if args.checkpoint else find_checkpoint(args.runs_dir)
    print(f"checkpoint {relative(path)} ({why})")
    return path


MAP_LEVELS = 255  # saved maps as uint8: the colour map has 256 levels


@dataclass
class CifarJob:
    """What a cifar10 command reads and where it writes: the checkpoint (loaded, and so checked,
    even for --plot-only), the figure folder, and the saved result with its settings and inputs."""
    path: str
    model: object
    ckpt: dict
    fig_dir: str
    publish: bool
    saved: str
    settings: dict
    inputs: dict


def cifar_job(args, device, name, flags):
    """The CifarJob of the result `name`, decided by the flags `flags` (and --seed, --class-index)."""
    path = chosen_checkpoint(args)
    model, ckpt = load_cnn(path, device)
    fig_dir, publish = figure_dir(args, path)  # checked before the work, which may take minutes
    return CifarJob(path, model, ckpt, fig_dir, publish,
                    outputs.analysis_path(name, fig_dir, publish, "ex2_cam", args.plot_only),
                    {k: getattr(args, k) for k in ("seed", "class_index") + flags},
                    outputs.inputs_of({relative(path): path}))


def cam_schema(settings, classes):
    """The whole saved CAM figure of `settings["num_images"]` images of `classes` classes."""
    n, label = settings["num_images"], kinds.Number(int, 0, classes - 1)
    maps = kinds.Packed("uint8", (n, None, None))
    return {"title": str, "caption": str, "images": kinds.Packed("uint8", (n, None, None, 3)), "maps": maps,
            "true_maps": maps, "true": kinds.ListOf(label, n), "pred": kinds.ListOf(label, n),
            "explained": kinds.ListOf(label, n), "names": kinds.ListOf(str, classes)}


def faithfulness_schema(settings):
    """The whole saved faithfulness evaluation: per image and method, AUCs and Average Drop
    fractions, Increase 0 or 1; the mean curves of `steps` + 1 points; at most --eval-images."""
    fraction = kinds.Packed("float32", (None,), 0, 1)
    curve = kinds.Packed("float32", (settings["steps"] + 1,), 0, 1)
    measures = {k: fraction for k in ("deletion", "insertion", "drop", "increase")}
    return {"images": kinds.Number(int, 1, settings["eval_images"]), "caption": str,
            "stats": {m: measures for m in METHODS}, "curves": {m: {"deletion": curve, "insertion": curve}
                                                                for m in METHODS}}


def saved_panel(c):
    """(CamPanel, title, caption) of a saved CAM figure."""
    maps, true_maps = (kinds.unpacked(c[k]).numpy() / MAP_LEVELS for k in ("maps", "true_maps"))
    panel = CamPanel(kinds.unpacked(c["images"]).numpy(), maps, list(c["true"]), list(c["pred"]),
                     list(c["explained"]), list(c["names"]), true_maps)
    return panel, str(c["title"]), str(c["caption"])


def saved_faithfulness(c):
    """(images, stats, curves, caption) of a saved faithfulness evaluation."""
    stats, curves = ({m: {k: kinds.unpacked(v) for k, v in d.items()} for m, d in c[part].items()}
                     for part in ("stats", "curves"))
    if any(len(v) != c["images"] for d in stats.values() for v in d.values()):
        raise ValueError(f"its measures are not one per image of its {c['images']}")
    return int(c["images"]), stats, curves, str(c["caption"])


def cifar_figure(args, device):
    """The CAM figure of the chosen network on `--num-images` seeded test images, drawn from the
    saved images and maps (results/ex2_cam/cifar10.json for the README's)."""
    job = cifar_job(args, device, "cifar10", ("num_images",))
    model, ckpt, path, saved = job.model, job.ckpt, job.path, job.saved
    if not args.plot_only:
        data = load_cifar10(args.data_dir, device, ckpt["config"]["val_size"])  # the split it trained with
        check_class_index(args, len(data.classes))
        if args.num_images > len(data.test):
            raise UserError(f"--num-images {args.num_images} exceeds the {len(data.test)} test images")
        generator = torch.Generator().manual_seed(args.seed)
        idx = torch.randperm(len(data.test), generator=generator)[:args.num_images]
        images, y = data.test.x[idx.to(device)], data.test.y[idx.to(device)]
        maps, pred, classes, true_maps = explain(model, normalize_images(images), y, args.class_index)
        config = ckpt["config"]
        scaled = [kinds.packed((m * MAP_LEVELS).round().to(torch.uint8)) for m in (maps, true_maps)]
        outputs.save_analysis(saved, "cifar10", job.settings, job.inputs, {
            "title": f"CAM of {cnn_name(config['residual'], config['blocks'])} (validation acc. "
                     f"{ckpt['val_acc']:.3f}) on CIFAR-10 test images",
            "caption": f"{data.source} test images (seed {args.seed}); checkpoint {relative(path)}; "
                       f"{hardware(device)}",
            "images": kinds.packed(images.permute(0, 2, 3, 1)), "maps": scaled[0], "true_maps": scaled[1],
            "true": y.cpu().tolist(), "pred": pred.tolist(), "explained": classes.tolist(),
            "names": list(data.classes)})
    command = f"python {PROG} cifar10"
    schema = cam_schema(job.settings, job.ckpt["arch"]["kwargs"]["num_classes"])
    panel, title, caption = outputs.read_analysis(saved, "cifar10", job.settings, job.inputs, command,
                                                  saved_panel, schema)
    out = os.path.join(job.fig_dir, "ex2_cam_cifar10.png")
    plot_cams(panel, title, caption, out)
    correct = sum(t == p for t, p in zip(panel.true, panel.pred))
    print(f"{len(panel.true)} images, {correct} correctly classified; figure {out} (from {saved})")
    return out


@torch.no_grad()
def _method_maps(method, model, x, classes, generator):
    if method == "CAM":
        with CAM(model, model.features, model.classifier) as cam:
            return cam(x, classes)[0]
    if method == "Grad-CAM":
        with GradCAM(model, model.features) as gradcam:
            return gradcam(x, classes)[0]
    h, w = model.features(x[:1]).shape[-2:]
    return random_maps(x, (h, w), generator)


def faithfulness(model, data, args, device, batch_size=250):
    """Each measure, per image, for each method, on `args.eval_images` seeded test images."""
    n = min(args.eval_images, len(data.test))
    generator = torch.Generator().manual_seed(args.seed)
    # a seeded sample: an ImageFolder copy stores the test set sorted by class
    idx = torch.randperm(len(data.test), generator=generator)[:n].to(device)
    per_image = {m: {k: [] for k in ("deletion", "insertion", "drop", "increase")} for m in METHODS}
    curves = {m: {"deletion": [], "insertion": []} for m in METHODS}
    from tqdm import tqdm
    for start in tqdm(range(0, n, batch_size), desc="faithfulness", unit="batch"):
        x = normalize_images(data.test.x[idx[start:start + batch_size]])
        with torch.no_grad():
            classes = model(x).argmax(1) if args.class_index is None else \
                torch.full((x.shape[0],), args.class_index, device=device)
        for m in METHODS:
            maps = _method_maps(m, model, x, classes, generator)
            c = deletion_insertion(model, x, classes, maps, args.steps)
            drop, inc = drop_and_increase(model, x, classes, maps)
            for k in ("deletion", "insertion"):
                per_image[m][k].append(auc(c[k]).cpu())
                curves[m][k].append(c[k].cpu())
            per_image[m]["drop"].append(drop.cpu())
            per_image[m]["increase"].append(inc.cpu())
    stats = {m: {k: torch.cat(v) for k, v in d.items()} for m, d in per_image.items()}
    curves = {m: {k: torch.cat(v).mean(0) for k, v in d.items()} for m, d in curves.items()}
    return n, stats, curves


def faithfulness_table(n, stats, caption, target="the predicted class"):
    lines = ["| method | deletion AUC (lower is better) | insertion AUC (higher is better) "
             "| Average Drop % (lower) | Increase in Confidence % (higher) |",
             "|---|---:|---:|---:|---:|"]
    for m, s in stats.items():
        deletion, insertion = (format_mean_std(s[k].tolist()) for k in ("deletion", "insertion"))
        lines.append(f"| {m} | {deletion} | {insertion} "
                     f"| {100 * s['drop'].mean():.1f} | {100 * s['increase'].mean():.1f} |")
    lines += ["", f"Mean ± std over {n} CIFAR-10 test images (a seeded sample), explaining {target}. "
                  f"{caption}. Made by `python {PROG} cifar10 --evaluate`."]
    return "\n".join(lines) + "\n"


def plot_faithfulness(curves, caption, path):
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, k in zip(axes, ("deletion", "insertion")):
        for m, c in curves.items():
            # for GAP + linear, Grad-CAM is ReLU(CAM) / hw, so the two curves coincide;
            # CAM is drawn wide beneath Grad-CAM's dashes so that both show
            style = {"CAM": {"lw": 4, "alpha": 0.45}, "Grad-CAM": {"ls": "--"}}.get(m, {})
            ax.plot(torch.linspace(0, 1, len(c[k])), c[k], label=m, **style)
        ax.set(xlabel=f"fraction of pixels {'removed' if k == 'deletion' else 'revealed'}",
               ylabel="probability of the class", title=k)
        ax.grid(alpha=0.3)
    axes[0].legend(title="CAM and Grad-CAM coincide", fontsize=8, title_fontsize=8)
    save_figure(fig, caption, path)


def cifar_evaluate(args, device):
    """--evaluate: the faithfulness table and curves, drawn from the saved per-image measures
    (results/ex2_cam/cifar10_faithfulness.json for the README's); returns them."""
    import time
    job = cifar_job(args, device, "cifar10_faithfulness", ("eval_images", "steps"))
    model, ckpt, path, saved, fig_dir = job.model, job.ckpt, job.path, job.saved, job.fig_dir
    start = time.perf_counter()
    if not args.plot_only:
        data = load_cifar10(args.data_dir, device, ckpt["config"]["val_size"])  # the split it trained with
        check_class_index(args, len(data.classes))
        n, stats, curves = faithfulness(model, data, args, device)
        outputs.save_analysis(saved, "cifar10_faithfulness", job.settings, job.inputs, {
            "images": n, "caption": f"{data.source}, checkpoint {relative(path)}, {args.steps} steps; "
                                    f"{hardware(device)}",
            "stats": {m: {k: kinds.packed(v) for k, v in d.items()} for m, d in stats.items()},
            "curves": {m: {k: kinds.packed(v) for k, v in d.items()} for m, d in curves.items()}})
    command = f"python {PROG} cifar10 --evaluate"
    n, stats, curves, caption = outputs.read_analysis(
        saved, "cifar10_faithfulness", job.settings, job.inputs, command, saved_faithfulness,
        faithfulness_schema(job.settings))
    target = "the predicted class" if args.class_index is None else f"class {args.class_index}"
    table = faithfulness_table(n, stats, caption, target)
    table_path = outputs.write_table(table, "ex2_cam_faithfulness", fig_dir, job.publish)
    plot_faithfulness(curves, caption, os.path.join(fig_dir, "ex2_cam_faithfulness.png"))
    print(table)
    done = "redrawn from the saved measures of" if args.plot_only else "evaluated:"
    print(f"{done} {n} images in {time.perf_counter() - start:.0f} s; table {table_path}, "
          f"figure in {fig_dir}/ "
          f"(from {saved})")
    return stats


# ----------------------------------------------------------------------------- photos

def array_sha256(image):
    """The SHA-256 of a uint8 image's pixels: which photo a result was computed from, whatever
    file or package it came in."""
    return hashlib.sha256(image.contiguous().numpy().tobytes()).hexdigest()


def load_photo(name):
    """A shipped photo as a uint8 (3, H, W) tensor, refused in one line unless its pixels are the
    ones PHOTOS pins (a package's photo replaced or cut short would change the README's results)."""
    import numpy as np
    remedy = "reinstall matplotlib and scikit-image (pip install --force-reinstall matplotlib scikit-image)"
    if name == "grace_hopper":
        from matplotlib.cbook import get_sample_data
        try:
            array = image_tensor(str(get_sample_data("grace_hopper.jpg", asfileobj=False))).numpy()
        except DataError as e:
            raise UserError(f"{e}; {remedy}")
    else:
        try:
            import skimage.data
            array = getattr(skimage.data, name)()
        except ImportError:
            raise UserError("the photos of scikit-image are not installed: pip install scikit-image")
        except Exception as e:
            raise UserError(f"scikit-image's photo {name} cannot be read ({type(e).__name__}); {remedy}")
    image = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    if array_sha256(image) != PHOTOS[name].sha256:
        raise UserError(f"the photo {name} of {PHOTOS[name].source} is not the one this repository's "
                        f"results were computed from (its pixels' SHA-256 differs); {remedy}")
    return image


def load_photo_file(path):
    """A user's JPEG or PNG of any size as a uint8 (3, H, W) tensor, through the one image reader."""
    try:
        image = image_tensor(path)
    except DataError as e:
        raise UserError(str(e))
    return image.permute(2, 0, 1).contiguous()


def photo_input(image, size=PHOTO_SIZE):
    """uint8 (3, H, W) -> normalized (3, size, size): the shorter side resized to `size` (bicubic),
    the centre cropped square (the whole width of a portrait photo stays in view)."""
    from torchvision.transforms.functional import InterpolationMode, center_crop, resize
    x = center_crop(resize(image, size, interpolation=InterpolationMode.BICUBIC, antialias=True), size)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (LITE_MEAN, LITE_STD))
    return (x.float() / 255 - mean) / std


def photo_maps(model, x, classes):
    """{'CAM', 'Grad-CAM'}: (B, h, w) maps of `classes` on the 7x7 features, as computed (raw):
    upsample_and_scale turns them into the (B, H, W) maps in [0, 1] that are drawn and measured."""
    layer = model.head_activation
    with CAM(model, layer, model.classifier) as cam:
        cams = cam(x, classes, raw=True)[0]
    with GradCAM(model, layer) as gradcam:
        gradcams = gradcam(x, classes, raw=True)[0]
    return {"CAM": cams, "Grad-CAM": gradcams}


def peak_cells(raw):
    """(row, col) of each (h, w) map's largest value."""
    w = raw.shape[-1]
    return [(int(i) // w, int(i) % w) for i in raw.flatten(1).argmax(1)]


@torch.no_grad()
def random_deletion(model, x, classes, steps, draws, generator, batch=PHOTO_BATCH):
    """(B, draws) deletion AUCs of `draws` random maps per image: where a map falls in this
    distribution says more than its difference from one random draw."""
    h = x.shape[-1] // 32  # the network's output stride
    out = []
    for i in tqdm(range(x.shape[0]), desc="random maps", unit="photo"):
        aucs = []
        for start in range(0, draws, batch):
            n = min(batch, draws - start)
            xi, ci = x[i:i + 1].expand(n, -1, -1, -1), classes[i:i + 1].expand(n)
            maps = random_maps(xi, (h, h), generator)
            curves = deletion_insertion(model, xi, ci, maps, steps, ("deletion",))
            aucs.append(auc(curves["deletion"]).cpu())
        out.append(torch.cat(aucs))
    return torch.stack(out)


def compute_photos(model, images, names, args, device):
    """Everything the photos' table and figure show, as saved (JSON): top-5, the probabilities of
    the classes each photo shows, CAM and Grad-CAM, where CAM peaks, and the deletion and
    insertion AUCs of both against `args.draws` random maps per photo."""
    from torchvision.models import ResNet18_Weights
    categories = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]  # ImageNet-1k's names, in index order
    x = torch.stack([photo_input(image) for image in images]).to(device)
    with torch.no_grad():
        probs = model(x).softmax(1)
    top = probs.topk(TOP_K, dim=1)
    classes = top.indices[:, 0] if args.class_index is None else torch.full_like(top.indices[:, 0],
                                                                                 args.class_index)
    raw = photo_maps(model, x, classes)
    aucs = {}
    with torch.no_grad():
        for method, m in raw.items():
            curves = deletion_insertion(model, x, classes, upsample_and_scale(m, x.shape[-2:]), args.steps)
            aucs[method] = {k: auc(curves[k]).tolist() for k in ("deletion", "insertion")}
    generator = torch.Generator().manual_seed(args.seed)
    random = random_deletion(model, x, classes, args.steps, args.draws, generator)
    shows = [PHOTOS[n].classes if n in PHOTOS else () for n in names]
    return {"names": list(names), "sources": [PHOTOS[n].source if n in PHOTOS else n for n in names],
            "explained": [categories[int(c)] for c in classes],
            "tops": [[[categories[int(i)], float(p)] for p, i in zip(ps, ids)]
                     for ps, ids in zip(top.values, top.indices)],
            "shows": [[[categories[c], float(probs[j, c])] for c in cs] for j, cs in enumerate(shows)],
            "aucs": aucs, "random_deletion": kinds.packed(random.float().cpu()),
            "maps": {k: kinds.packed(v.float().cpu()) for k, v in raw.items()}}


@dataclass
class PhotoResult:
    """A saved photos analysis, decoded: what the table and figure show."""
    names: list
    sources: list
    explained: list
    tops: list
    shows: list
    raw: dict                 # method -> (N, h, w) maps as computed
    aucs: dict
    random_deletion: object   # (N, draws) tensor


def photos_schema(settings):
    """The whole saved photos analysis: its top-5 and shown classes with probabilities, AUCs in
    [0, 1], `draws` random deletions per photo; that each has one entry per photo, saved_photos."""
    ranked = kinds.ListOf(kinds.ListOf((str, float), 2), min_length=0)  # [(class, probability)], maybe none
    aucs = {"deletion": kinds.ListOf(kinds.FRACTION), "insertion": kinds.ListOf(kinds.FRACTION)}
    return {"names": kinds.ListOf(str), "sources": kinds.ListOf(str), "explained": kinds.ListOf(str),
            "tops": kinds.ListOf(ranked),
            "shows": kinds.ListOf(ranked), "aucs": {"CAM": aucs, "Grad-CAM": aucs},
            "random_deletion": kinds.Packed("float32", (None, settings["draws"]), 0, 1),
            "maps": {m: kinds.Packed("float32", (None, None, None)) for m in ("CAM", "Grad-CAM")},
            "caption": str}


def saved_photos(c):
    """The PhotoResult of a saved photos analysis; ValueError unless its parts agree."""
    n = len(c["names"])
    raw = {k: kinds.unpacked(v) for k, v in c["maps"].items()}
    random = kinds.unpacked(c["random_deletion"])
    tops = [[(str(label), float(p)) for label, p in t] for t in c["tops"]]
    shows = [[(str(label), float(p)) for label, p in s] for s in c["shows"]]
    aucs = {m: {k: [float(v) for v in c["aucs"][m][k]] for k in ("deletion", "insertion")} for m in raw}
    lengths = {len(c["sources"]), len(c["explained"]), len(tops), len(shows), random.shape[0],
               *(m.shape[0] for m in raw.values()), *(len(v) for a in aucs.values() for v in a.values())}
    if lengths != {n} or set(raw) != {"CAM", "Grad-CAM"} or random.dim() != 2 or \
            any(m.dim() != 3 for m in raw.values()):
        raise ValueError("its parts are not one entry per photo")
    return PhotoResult(list(c["names"]), list(c["sources"]), list(c["explained"]), tops, shows, raw, aucs,
                       random)


def plot_photos(r, images, caption, path):
    """A column per photo (`images`: (N, H, W, 3) in [0, 1], as the network saw them): the photo
    with its top-5, then its CAM and its Grad-CAM."""
    import matplotlib.pyplot as plt
    n = len(r.names)
    maps = {k: upsample_and_scale(v, images.shape[1:3]).numpy() for k, v in r.raw.items()}
    fig, axes = plt.subplots(3, n, figsize=(2.6 * max(n, 2), 10.2), squeeze=False)
    for j in range(n):
        axes[0, j].imshow(images[j])
        axes[0, j].set_title("\n".join(f"{label} {p:.2f}" for label, p in r.tops[j]), fontsize=7, loc="left")
        for row, method in ((1, "CAM"), (2, "Grad-CAM")):
            axes[row, j].imshow(images[j])
            shown = axes[row, j].imshow(maps[method][j], cmap="jet", alpha=0.5, vmin=0, vmax=1)
            axes[row, j].set_title(f"{method}: {r.explained[j]}", fontsize=7)
        for ax in axes[:, j]:
            ax.axis("off")
    fig.suptitle("EfficientNet-Lite0 (ImageNet) on photos: top-5, then CAM and Grad-CAM of the explained "
                 "class",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.09, 1, 1), h_pad=2.0)
    bar = fig.colorbar(shown, cax=fig.add_axes((0.3, 0.06, 0.4, 0.012)), orientation="horizontal")
    bar.set_label("map scaled to [0, 1] per image (drawn at half opacity over it)", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    save_figure(fig, caption, path, caption_lines=2, layout=False)


def photos_table(r, steps, caption, command):
    """Per photo: its top-1 and top-5, the classes it shows, where CAM peaks, and CAM's deletion
    AUC against the distribution of random maps'; then the methods over the photos."""
    lines = ["| photo | source | top-1 (probability) | top-5 | what it shows (probability) | CAM peak "
             "(row, col of 7x7) | deletion AUC: CAM | random maps | random maps CAM beats |",
             "|---|---|---|---|---|---:|---:|---:|---:|"]
    draws, peaks = r.random_deletion.shape[1], peak_cells(r.raw["CAM"])
    for j, name in enumerate(r.names):
        top, rest = r.tops[j], ", ".join(label for label, _ in r.tops[j][1:])
        shows = ", ".join(f"{label} ({p:.3f})" for label, p in r.shows[j]) or "-"
        cam, random = r.aucs["CAM"]["deletion"][j], r.random_deletion[j]
        beaten = float((random > cam).float().mean())
        lines.append(f"| {name} | {r.sources[j]} | {top[0][0]} ({top[0][1]:.2f}) | {rest} | {shows} "
                     f"| {peaks[j]} | {cam:.3f} | {format_mean_std(random.tolist())} "
                     f"| {beaten:.0%} |")
    lines += ["", "| method | deletion AUC (lower is better) | insertion AUC (higher is better) |",
              "|---|---:|---:|"]
    for method, a in r.aucs.items():
        lines.append(f"| {method} | {format_mean_std(a['deletion'])} | {format_mean_std(a['insertion'])} |")
    lines += ["", f"Deletion and insertion of the explained class over {steps} steps; random maps: "
                  f"{draws} draws per photo (mean ± std, and the share whose deletion AUC is higher than "
                  f"CAM's); methods: mean ± std over the {len(r.names)} photos only, too few for a "
                  f"ranking. {caption}. Made by `{command}`."]
    return "\n".join(lines) + "\n"


def photos(args, device):
    """CAM and Grad-CAM of EfficientNet-Lite0 on the shipped photos (saved in results/ex2_cam/
    and drawn from there: --plot-only runs no network), or on the user's own photo files (their
    figure goes to a scratch folder, never figures/)."""
    check_class_index(args, MAX_CLASSES)
    own = bool(args.paths)
    readme = get_args(["photos"])
    fig_dir, publish = outputs.destination(args, readme, SCRATCH_DIR, inputs_published=not own)
    if own:
        images = [load_photo_file(p) for p in args.paths]  # every file checked before the network runs
        names = [os.path.basename(p) for p in args.paths]
    else:
        images, names = [load_photo(n) for n in PHOTOS], list(PHOTOS)
    inputs = {"weights": WEIGHTS_SHA256, **{n: array_sha256(i) for n, i in zip(names, images)}}
    settings = {k: getattr(args, k) for k in ("steps", "class_index", "draws", "seed")}
    saved = outputs.analysis_path("photos", fig_dir, publish, "ex2_cam", args.plot_only)
    command = f"python {PROG} photos" + (" " + " ".join(args.paths) if own else "")
    caption = (f"Photos {'given on the command line' if own else 'of matplotlib and scikit-image'}, "
               f"{PHOTO_SIZE}x{PHOTO_SIZE}; EfficientNet-Lite0 ImageNet weights of the package "
               f"{WEIGHTS_PACKAGE}; {hardware(device)}")
    if not args.plot_only:
        model = load_efficientnet_lite0(device)
        content = compute_photos(model, images, names, args, device)
        outputs.save_analysis(saved, "photos", settings, inputs, {**content, "caption": caption})
    r, caption = outputs.read_analysis(saved, "photos", settings, inputs, command,
                                       lambda c: (saved_photos(c), str(c["caption"])),
                                       photos_schema(settings))
    for name, t in zip(r.names, r.tops):
        print(f"{name}: {t[0][0]} ({t[0][1]:.3f}); top-5 " + ", ".join(f"{label} {p:.3f}" for label, p in t))
    table = photos_table(r, args.steps, caption, command)
    table_path = outputs.write_table(table, "ex2_cam_photos", fig_dir, publish)
    out = os.path.join(fig_dir, "ex2_cam_photos.png")
    shown = denormalize(torch.stack([photo_input(image) for image in images]), LITE_MEAN, LITE_STD)
    plot_photos(r, shown, caption, out)
    print(table)
    print(f"table {table_path}, figure {out} (from {saved})")
    return r.tops


# ----------------------------------------------------------------------------- Imagenette

def imagenet_transform():
    """The preprocessing the weights were trained with: resize 256, center crop 224, normalize."""
    from torchvision.models import ResNet18_Weights
    return ResNet18_Weights.IMAGENET1K_V1.transforms()


def read_pil(path):
    """An image file as a PIL RGB image, through the one image reader of every script."""
    from PIL import Image
    return Image.fromarray(image_tensor(path).numpy())


def load_imagenette(data_dir):
    """Imagenette val (160px) through torchvision, from `data_dir`, downloading if possible."""
    from torchvision.datasets import Imagenette
    transform = imagenet_transform()
    try:
        return Imagenette(data_dir, split="val", size=IMAGENETTE_SIZE, transform=transform, loader=read_pil)
    except RuntimeError:
        pass
    existed = os.path.isdir(data_dir)
    try:
        return Imagenette(data_dir, split="val", size=IMAGENETTE_SIZE, download=True, transform=transform,
                          loader=read_pil)
    except Exception:
        if not existed:  # a failed download leaves no empty folder behind
            shutil.rmtree(data_dir, ignore_errors=True)
        raise UserError(f"Imagenette ({IMAGENETTE_SIZE}) not found in {data_dir}/imagenette2-160/val/<wnid>/ "
                        "and it cannot be downloaded; put torchvision's Imagenette folder under --data-dir")


def imagenette(args, device):
    from tqdm import tqdm
    model = load_resnet18(args.weights, device)  # weights first: the cheaper check
    ds = load_imagenette(args.data_dir)
    check_class_index(args, model.fc.out_features)
    if args.num_images > len(ds):
        raise UserError(f"--num-images {args.num_images} exceeds the {len(ds)} images")
    # before the evaluation
    fig_dir, publish = outputs.destination(args, get_args(["imagenette"]), SCRATCH_DIR)
    out = os.path.join(fig_dir, "ex2_cam_imagenette.png")
    to_imagenet = torch.tensor([IMAGENETTE_TO_IMAGENET[w][1] for w in ds.wnids], device=device)
    names = {i: name for name, i in IMAGENETTE_TO_IMAGENET.values()}
    # top-1 accuracy over the 1000 ImageNet classes on Imagenette val
    n_eval = min(args.max_eval or len(ds), len(ds))
    # a seeded sample when not all: the folder is sorted by class
    subset = torch.randperm(len(ds), generator=torch.Generator().manual_seed(args.seed))[:n_eval].tolist()
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, subset), batch_size=IMAGENETTE_BATCH)
    correct = 0
    with torch.no_grad():
        for x, y in tqdm(loader, desc="top-1 on Imagenette val", unit="batch"):
            correct += int((model(x.to(device)).argmax(1) == to_imagenet[y.to(device)]).sum())
    acc = correct / n_eval
    # the figure: layer4's output (after the last residual addition and ReLU), then avgpool + fc
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(args.seed))[:args.num_images]
    x = torch.stack([ds[i][0] for i in idx.tolist()]).to(device)
    y = to_imagenet[torch.tensor([ds[i][1] for i in idx.tolist()], device=device)]
    with CAM(model, model.layer4, model.fc) as cam:
        maps, logits, explained = cam(x, args.class_index)
        true_maps, _, _ = cam(x, y)
    pred = logits.argmax(1).cpu().tolist()
    explained = explained.cpu().tolist()
    labels = {i: names.get(i, f"ImageNet {i}") for i in set(pred) | set(y.cpu().tolist()) | set(explained)}
    transform = imagenet_transform()
    source = f"weights {args.weights}" if args.weights else "torchvision IMAGENET1K_V1 weights"
    title = f"CAM of ResNet-18 (layer4) on Imagenette val; top-1 accuracy {acc:.3f} on {n_eval} images"
    caption = f"Imagenette val {IMAGENETTE_SIZE}; {source}; {hardware(device)}"
    panel = CamPanel(denormalize(x, transform.mean, transform.std), maps.cpu().numpy(), y.cpu().tolist(),
                     pred, explained, labels, true_maps.cpu().numpy())
    plot_cams(panel, title, caption, out)
    print(f"top-1 accuracy of ResNet-18 on Imagenette val ({n_eval} images): {acc:.4f}; figure {out}")
    return acc


def main(args):
    device = get_device(args.device)
    if args.dataset == "imagenette":
        return imagenette(args, device)
    if args.dataset == "photos":
        return photos(args, device)
    return cifar_evaluate(args, device) if args.evaluate else cifar_figure(args, device)


if __name__ == "__main__":
    run_cli(main, get_args(), PROG, INTERRUPTED)
