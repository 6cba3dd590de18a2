"""Class Activation Maps, Grad-CAM, and measures of how faithful a saliency map is.

CAM (Zhou et al., CVPR 2016, "Learning Deep Features for Discriminative Localization"):
for a network ending in features A (B, K, h, w) -> global average pooling -> linear
(weights W (C, K), bias b), the map of class c is

    M_c(i, j) = sum_k W[c, k] * A_k(i, j),   and   mean_ij M_c + b_c = logit_c.

Grad-CAM (Selvaraju et al., ICCV 2017): for any layer A, alpha_k = mean_ij d logit_c / d A_k(i, j)
and the map is ReLU(sum_k alpha_k A_k). On the last feature layer of a GAP+linear network
alpha_k = W[c, k] / (h w), so Grad-CAM = ReLU(CAM) / (h w).

Faithfulness: deletion and insertion curves (Petsiuk et al., BMVC 2018, "RISE") and
Average Drop / Increase in Confidence (Chattopadhyay et al., WACV 2018, "Grad-CAM++").
"""
import torch
import torch.nn.functional as F

EPS = 1e-8


def upsample_and_scale(maps, size):
    """(B, h, w) maps -> (B, H, W), bilinear, each map min-max scaled to [0, 1]."""
    up = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    lo = up.flatten(1).min(1).values[:, None, None]
    hi = up.flatten(1).max(1).values[:, None, None]
    return (up - lo) / (hi - lo + EPS)


class _Hooked:
    """Records the output of `layer` while inside a `with` block, with the model in eval mode (a
    map explains the network as it predicts: BatchNorm's running statistics, no dropout); the
    hook is removed and the caller's mode restored after it."""

    def __init__(self, model, layer):
        self.model, self.layer = model, layer
        self.activations, self._handle, self._was_training = None, None, None

    def _record(self, module, inputs, output):
        self.activations = output

    def __enter__(self):
        self._was_training = self.model.training
        self.model.eval()
        self._handle = self.layer.register_forward_hook(self._record)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        self._handle, self.activations = None, None
        self.model.train(self._was_training)
        return False

    @staticmethod
    def _targets(logits, classes):
        if classes is None:
            return logits.argmax(1)
        classes = torch.as_tensor(classes, device=logits.device).expand(logits.shape[0])
        if classes.min() < 0 or classes.max() >= logits.shape[1]:
            raise ValueError(f"class index out of range 0..{logits.shape[1] - 1}")
        return classes


class CAM(_Hooked):
    """CAM of `classifier` over the output of `feature_layer` (a GAP+linear network).

        with CAM(model, model.features, model.classifier) as cam:
            maps, logits, classes = cam(x)              # (B, H, W) in [0, 1], predicted classes
            raw, logits, classes = cam(x, classes=y, raw=True)  # (B, h, w), un-normalized
    """

    def __init__(self, model, feature_layer, classifier):
        super().__init__(model, feature_layer)
        self.classifier = classifier

    @torch.no_grad()
    def __call__(self, x, classes=None, raw=False):
        logits = self.model(x)
        classes = self._targets(logits, classes)
        weights = self.classifier.weight[classes]                       # (B, K)
        maps = torch.einsum("bk,bkhw->bhw", weights, self.activations.float())
        return (maps if raw else upsample_and_scale(maps, x.shape[-2:])), logits, classes


class GradCAM(_Hooked):
    """Grad-CAM over the output of any convolutional `layer`; same call as CAM."""

    def __call__(self, x, classes=None, raw=False):
        with torch.enable_grad():
            logits = self.model(x)
            classes = self._targets(logits, classes)
            score = logits.gather(1, classes[:, None]).sum()  # images are independent in eval mode
            grads, = torch.autograd.grad(score, self.activations)
        alpha = grads.mean(dim=(2, 3), keepdim=True)                    # (B, K, 1, 1)
        maps = F.relu((alpha * self.activations).sum(1)).detach()        # (B, h, w)
        return (maps if raw else upsample_and_scale(maps, x.shape[-2:])), logits.detach(), classes


def random_maps(x, size, generator):
    """The baseline: random (B, h, w) maps, upsampled and scaled like CAMs."""
    noise = torch.rand(x.shape[0], *size, generator=generator).to(x.device)
    return upsample_and_scale(noise, x.shape[-2:])


def blur(x, kernel_size=11, sigma=5.0):
    """A strong Gaussian blur: the 'nothing revealed yet' start of the insertion curve."""
    from torchvision.transforms.functional import gaussian_blur
    return gaussian_blur(x, [kernel_size, kernel_size], [sigma, sigma])


@torch.no_grad()
def deletion_insertion(model, x, classes, maps, steps, which=("deletion", "insertion")):
    """Probability of `classes` as pixels are removed (deletion) or revealed (insertion)
    in order of decreasing saliency, in `steps` equal chunks.

    x: (B, C, H, W) normalized images, so a zero is the dataset's mean colour (deleted);
    insertion starts from a blurred copy. Returns a (B, steps + 1) curve for each of `which`.
    """
    b, _, h, w = x.shape
    # stable: upsampled maps have many ties, and an unstable order would change AUCs run to run
    order = maps.flatten(1).argsort(dim=1, descending=True, stable=True)  # (B, H*W), most salient first
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(h * w, device=x.device).expand(b, -1))
    rank = rank.view(b, 1, h, w)
    blurred, zeros = blur(x), torch.zeros_like(x)
    curves = {name: [] for name in which}
    for i in range(steps + 1):
        shown = rank < round(i * h * w / steps)                        # the i-th fraction of pixels
        for name in which:
            inputs = torch.where(shown, zeros, x) if name == "deletion" else torch.where(shown, x, blurred)
            probs = model(inputs).softmax(1)
            curves[name].append(probs.gather(1, classes[:, None])[:, 0])
    return {k: torch.stack(v, 1) for k, v in curves.items()}


def auc(curve):
    """Area under (B, n) curves sampled evenly on [0, 1] (trapezoid rule)."""
    return ((curve[:, 1:] + curve[:, :-1]) / 2).mean(1)


@torch.no_grad()
def drop_and_increase(model, x, classes, maps):
    """Per image: Average Drop term max(0, Y - O) / Y and Increase indicator O > Y, where Y is
    the class probability on the image and O on the image masked by its map (x * map)."""
    y = model(x).softmax(1).gather(1, classes[:, None])[:, 0]
    o = model(x * maps[:, None]).softmax(1).gather(1, classes[:, None])[:, 0]
    return (y - o).clamp(min=0) / y, (o > y).float()
