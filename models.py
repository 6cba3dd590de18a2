"""The networks of the exercises: MLPs for MNIST and He et al.'s CIFAR ResNets.

Plain and residual variants share one block class and differ only in the line
`x = x + branch(x)`, switched by a flag, so the comparison is fair by construction:
same layers, same initialization, same parameter count.
"""
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
    """Plain MLP: input projection, `depth` hidden layers, classifier: (B, in) -> (B, classes).

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


MODELS = {"MLP": MLP, "CifarResNet": CifarResNet}


def build_model(arch):
    """The network an `arch` dict describes ({'name': 'CifarResNet', 'kwargs': {...}}), as a
    checkpoint stores it, so a checkpoint alone rebuilds its model."""
    try:
        return MODELS[arch["name"]](**arch["kwargs"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not a model description of this repository: {arch!r} ({e})")
