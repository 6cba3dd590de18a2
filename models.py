"""The networks of the exercises: MLPs for MNIST, He et al.'s CIFAR ResNets, EfficientNet-Lite0.

Plain and residual variants share one block class and differ only in the line
`x = x + branch(x)`, switched by a flag, so the comparison is fair by construction:
same layers, same initialization, same parameter count.
"""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F


class MLPBlock(nn.Module):
    """`n_layers` Linear+ReLU layers, with an optional identity skip: (B, w) -> (B, w)."""

    def __init__(self, width, n_layers, residual, rezero=False):
        super().__init__()
        layers = []
        for _ in range(n_layers):
            layers += [nn.Linear(width, width), nn.ReLU()]
        self.branch = nn.Sequential(*layers)
        self.residual = residual
        # ReZero / SkipInit: a learnable scalar on the branch, zero at initialization, so
        # the block starts as the identity however deep the stack.
        self.gate = nn.Parameter(torch.zeros(())) if rezero else None

    def forward(self, x):
        out = self.branch(x)
        if self.gate is not None:
            out = self.gate * out
        return x + out if self.residual else out


class MLP(nn.Module):
    """Plain or residual MLP: input projection, `depth` hidden layers, classifier: (B, in) -> (B, classes).

    Depth convention: the input is first projected to `width`
    units by a Linear layer (the stem, not counted, no activation, so the residual stream
    starts signed); `depth` counts the width x width hidden Linear+ReLU layers that follow;
    a linear classifier ends the network.
    """

    def __init__(self, width, depth, in_features=784, num_classes=10,
                 layers_per_block=1, residual=False, rezero=False):
        super().__init__()
        if depth < 1 or width < 1 or layers_per_block < 1:
            raise ValueError("width, depth and layers_per_block must be positive")
        if depth % layers_per_block:
            raise ValueError(f"depth {depth} is not a multiple of layers_per_block {layers_per_block}")
        if rezero and not residual:
            raise ValueError("rezero gates only make sense on residual branches")
        self.stem = nn.Linear(in_features, width)
        self.blocks = nn.Sequential(*[
            MLPBlock(width, layers_per_block, residual, rezero)
            for _ in range(depth // layers_per_block)])
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.classifier(self.blocks(self.stem(x)))


def shortcut(x, out_channels, stride):
    """He et al.'s option A: strided identity, new channels zero-padded (no parameters)."""
    if stride > 1:
        x = x[:, :, ::stride, ::stride]
    extra = out_channels - x.shape[1]
    if extra:
        x = F.pad(x, (0, 0, 0, 0, 0, extra))  # pads the channel dimension at the end
    return x


class ConvBlock(nn.Module):
    """Two 3x3 conv+BN layers, optional skip: (B, c_in, H, W) -> (B, c_out, H/stride, W/stride)."""

    def __init__(self, in_channels, out_channels, stride, residual):
        super().__init__()
        self.branch = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.residual = residual
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x):
        out = self.branch(x)
        if self.residual:
            out = out + shortcut(x, self.out_channels, self.stride)
        return F.relu(out)


class CifarResNet(nn.Module):
    """He et al. (2016) CIFAR network of depth 6n+2: (B, 3, 32, 32) -> (B, classes).

    A 3x3 stem, three stages of `n` ConvBlocks at widths w, 2w, 4w (32x32, 16x16, 8x8),
    global average pooling and one linear layer. `features` (ending in the 8x8 maps) and
    `classifier` are named so the CAM exercise can hook them.
    """

    @staticmethod
    def depth_of(blocks_per_stage):
        """Weighted layers: the stem, two 3x3 convs per block in three stages, the classifier."""
        return 6 * blocks_per_stage + 2

    def __init__(self, blocks_per_stage, width=16, residual=True, num_classes=10, in_channels=3):
        super().__init__()
        if blocks_per_stage < 1 or width < 1:
            raise ValueError("blocks_per_stage and width must be positive")
        layers = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                  nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        channels = width
        for stage, stage_width in enumerate((width, 2 * width, 4 * width)):
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(ConvBlock(channels, stage_width, stride, residual))
                channels = stage_width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)
        self.depth = self.depth_of(blocks_per_stage)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        a = self.features(x)                      # (B, 4w, 8, 8)
        return self.classifier(a.mean(dim=(2, 3)))  # global average pool -> (B, classes)

    def class_maps(self, x):
        """The network made fully convolutional: the classifier applied at every location of the
        features as a 1x1 convolution, no pooling: (B, 3, H, W) -> (B, classes, H/4, W/4). Map c
        is the CAM of class c plus the bias b_c; its mean over locations is logit c."""
        w = self.classifier.weight                # (classes, 4w)
        return F.conv2d(self.features(x), w[:, :, None, None], self.classifier.bias)


def linear_as_conv(linear, kernel_size):
    """An nn.Linear as the convolution that applies it to every `kernel_size` window of a
    (B, C, H, W) input, C = in_features / (kh * kw), its input read in (C, kh, kw) order (the
    order of a flattened image): same weights, exactly the same outputs."""
    kh, kw = kernel_size
    channels, rest = divmod(linear.in_features, kh * kw)
    if rest:
        raise ValueError(f"{linear.in_features} inputs are not whole {kh}x{kw} windows")
    conv = nn.Conv2d(channels, linear.out_features, kernel_size, bias=linear.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.view(linear.out_features, channels, kh, kw))
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv


class ConvMLP(nn.Module):
    """An MLP made fully convolutional by network surgery, no retraining:
    (B, 1, H, W) -> (B, classes, H-h+1, W-w+1) for an MLP of (h, w) images. The stem becomes an
    h x w convolution and every later Linear a 1x1 convolution; residual blocks stay residual
    (x + branch(x) acts per location). Cell (i, j) is the MLP's logits of the window at (i, j)."""

    def __init__(self, mlp, image_shape):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.stem = linear_as_conv(mlp.stem, self.image_shape)
        self.blocks = copy.deepcopy(mlp.blocks)
        for block in self.blocks:
            for i, layer in enumerate(block.branch):
                if isinstance(layer, nn.Linear):
                    block.branch[i] = linear_as_conv(layer, (1, 1))
        self.classifier = linear_as_conv(mlp.classifier, (1, 1))

    def forward(self, x):
        return self.classifier(self.blocks(self.stem(x)))


class Conv2dSame(nn.Conv2d):
    """A convolution padded as TensorFlow's "SAME": the output is ceil(H / stride) by
    ceil(W / stride), and of an odd total padding the extra pixel goes to the bottom and right.
    For stride 1 and an odd kernel that is PyTorch's symmetric padding; for stride 2 it is not,
    and weights trained in TensorFlow give other outputs unless their convolutions pad this way.
    (B, C_in, H, W) -> (B, C_out, ceil(H / s), ceil(W / s))."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, **kwargs):
        symmetric = stride == 1 and kernel_size % 2 == 1   # then "SAME" is PyTorch's own padding
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         padding=(kernel_size - 1) // 2 if symmetric else 0, **kwargs)
        self.symmetric = symmetric

    def forward(self, x):
        if self.symmetric:
            return super().forward(x)
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((-(-size // s) - 1) * s + k - size, 0)   # -(-a // b) is ceil(a / b)
            pads += [total // 2, total - total // 2]             # (left, right), then (top, bottom)
        return super().forward(F.pad(x, pads))


class MBConv(nn.Module):
    """EfficientNet's inverted residual (Sandler et al. 2018; Tan & Le 2019), Lite form: ReLU6 and
    no squeeze-excitation. 1x1 expand -> k x k depthwise (stride s) -> 1x1 project, and
    `x = x + branch(x)` when the shapes allow: (B, C_in, H, W) -> (B, C_out, H/s, W/s)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, expand_ratio):
        super().__init__()
        hidden = in_channels * expand_ratio
        bn = dict(eps=EFFICIENTNET_BN_EPS, momentum=EFFICIENTNET_BN_MOMENTUM)
        if expand_ratio != 1:
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, **bn)
        self._depthwise_conv = Conv2dSame(hidden, hidden, kernel_size, stride, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, **bn)
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_channels, **bn)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x):
        h = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.residual else h


EFFICIENTNET_BN_EPS, EFFICIENTNET_BN_MOMENTUM = 1e-3, 0.01  # TensorFlow's, which trained the weights
# EfficientNet-Lite0's stages: (repeats, kernel, first stride, expand ratio, output channels)
EFFICIENTNET_LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                             (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))


LITE0_FEATURES = 1280  # the channels of EfficientNet-Lite0's last conv: its global-pooled features


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (the TF-Lite variant of Tan & Le 2019): (B, 3, 224, 224) -> (B, 1000).

    A stride-2 stem, 16 MBConv blocks, a 1x1 conv to 1280 channels (`features` ends in the 7x7
    maps, the output of `head_activation`), global average pooling and one linear layer
    (`classifier`): the head CAM needs.
    Parameter names follow the published state dict, so it loads as it is. The weights were
    trained in TensorFlow, whose "SAME" padding of a stride-2 convolution puts the extra pixel at
    the bottom and right: every convolution here pads that way (Conv2dSame), and a test holds the
    logits against an independent implementation (timm's tf_efficientnet_lite0) loaded with the
    same weights.
    """

    def __init__(self, num_classes=1000, stem_channels=32, head_channels=LITE0_FEATURES):
        super().__init__()
        bn = dict(eps=EFFICIENTNET_BN_EPS, momentum=EFFICIENTNET_BN_MOMENTUM)
        self._conv_stem = Conv2dSame(3, stem_channels, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(stem_channels, **bn)
        blocks, channels = [], stem_channels
        for repeats, kernel, stride, expand, out in EFFICIENTNET_LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(channels, out, kernel, stride if i == 0 else 1, expand))
                channels = out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(channels, head_channels, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(head_channels, **bn)
        self.head_activation = nn.ReLU6()  # its output is the feature maps CAM hooks (no weights)
        self._fc = nn.Linear(head_channels, num_classes)

    @property
    def classifier(self):
        return self._fc

    def features(self, x):
        x = F.relu6(self._bn0(self._conv_stem(x)))   # (B, 32, H/2, W/2)
        for block in self._blocks:
            x = block(x)                              # ... (B, 320, H/32, W/32)
        return self.head_activation(self._bn1(self._conv_head(x)))  # (B, 1280, H/32, W/32)

    def forward(self, x):
        return self._fc(self.features(x).mean(dim=(2, 3)))  # dropout is a training-time layer


class PartlyFrozenLite0(EfficientNetLite0):
    """EfficientNet-Lite0 of which only the submodules named in `trainable` learn (("",) for all):
    the frozen rest has requires_grad off and stays in eval mode, so its BatchNorm layers keep
    their pretrained statistics while the trainable part trains."""

    def __init__(self, num_classes=1000, trainable=("",)):
        super().__init__(num_classes)
        self.trainable = tuple(trainable)
        for name, p in self.named_parameters():
            p.requires_grad_(self.learns(name))

    def learns(self, name):
        """True if the parameter or submodule `name` is in (or is) one of the trainable parts."""
        return any(t == "" or name == t or name.startswith(t + ".") for t in self.trainable)

    def train(self, mode=True):
        super().train(False)
        for name, module in self.named_modules():
            if name and self.learns(name):
                module.train(mode)
        self.training = mode
        return self


MODELS = {"MLP": MLP, "CifarResNet": CifarResNet, "EfficientNetLite0": EfficientNetLite0,
          "PartlyFrozenLite0": PartlyFrozenLite0}


def build_model(arch):
    """The network an `arch` dict describes ({'name': 'CifarResNet', 'kwargs': {...}}), as a
    checkpoint stores it, so a checkpoint alone rebuilds its model."""
    try:
        return MODELS[arch["name"]](**arch["kwargs"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not a model description of this repository: {arch!r} ({e})")
