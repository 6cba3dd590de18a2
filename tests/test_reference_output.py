"""A network rebuilt for published weights is checked against a reference output, not only its keys.

The rule behind this file: a port that loads every key with the right shape can still compute
something else (a padding, an epsilon, an activation), and nothing downstream sees it. So each
network we rebuild for someone else's weights is run beside an independent implementation
loaded with the same weights, and their logits must agree.
"""
import pytest
import torch

import pretrained
from models import EFFICIENTNET_LITE0_STAGES, EfficientNetLite0

timm = pytest.importorskip("timm", reason="timm is the reference implementation (requirements.txt)")

# our names (those of the published state dict) -> timm's, per layer of an MBConv block
FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
         "_project_conv": "conv_pwl", "_bn2": "bn3"}
TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
       "_fc": "classifier"}


def timm_name(key):
    """'_blocks.3._expand_conv.weight' -> 'blocks.2.0.conv_pw.weight' (stage 2, its first block)."""
    parts = key.split(".")
    if parts[0] != "_blocks":
        return ".".join([TOP[parts[0]], *parts[1:]])
    index, stage = int(parts[1]), 0
    while index >= EFFICIENTNET_LITE0_STAGES[stage][0]:
        index -= EFFICIENTNET_LITE0_STAGES[stage][0]
        stage += 1
    layer = (FIRST_BLOCK if parts[1] == "0" else BLOCK)[parts[2]]
    return ".".join(["blocks", str(stage), str(index), layer, *parts[3:]])


@pytest.fixture(scope="module")
def both():
    ours = pretrained.load_efficientnet_lite0(torch.device("cpu"))
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    state = {timm_name(k): v for k, v in ours.state_dict().items()}
    reference.load_state_dict(state, strict=True)  # every key of both used, every shape equal
    return ours, reference


@pytest.mark.parametrize("size", [224, 64])
def test_a_network_rebuilt_for_published_weights_matches_a_reference_output(both, size):
    """EfficientNet-Lite0 against timm's tf_efficientnet_lite0 (TensorFlow's "SAME" padding), the
    same ImageNet weights: logits equal within 1e-4. The symmetric padding of the stride-2
    convolutions that this port had until December 2026 differed by up to 4 at 224 px."""
    ours, reference = both
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        a, b = ours(x), reference(x)
    assert a.shape == b.shape == (4, 1000)
    assert (a - b).abs().max() < 1e-4


def test_same_padding_puts_the_extra_pixel_bottom_right():
    """Stride 2, kernel 3, even input: TensorFlow pads 0 above and left, 1 below and right."""
    from models import Conv2dSame
    conv = Conv2dSame(1, 1, 3, 2, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0   # each output is its window's top-left input pixel
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(conv(x)[0, 0], x[0, 0, ::2, ::2])   # no padding above or left
    assert conv(torch.ones(1, 1, 5, 5)).shape[-1] == 3      # ceil(5 / 2)
    assert EfficientNetLite0()._conv_stem(torch.ones(1, 3, 32, 32)).shape[-1] == 16
