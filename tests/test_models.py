import pytest
import torch

from models import MLP, CifarResNet, ConvBlock, MLPBlock, build_model, shortcut


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("depth,layers_per_block", [(2, 1), (8, 2), (32, 1), (64, 2)])
def test_mlp_shapes_and_equal_parameter_counts(depth, layers_per_block):
    x = torch.randn(5, 784)
    plain = MLP(16, depth)
    residual = MLP(16, depth, layers_per_block=layers_per_block, residual=True)
    assert plain(x).shape == residual(x).shape == (5, 10)
    # stem 784*16+16, depth hidden layers 16*16+16, classifier 16*10+10
    expected = 784 * 16 + 16 + depth * (16 * 16 + 16) + 16 * 10 + 10
    assert n_params(plain) == n_params(residual) == expected
    assert len(residual.blocks) == depth // layers_per_block


def test_rezero_adds_one_scalar_per_block_and_starts_as_identity():
    model = MLP(16, 8, residual=True, rezero=True)
    assert n_params(model) == n_params(MLP(16, 8)) + 8
    h = torch.randn(4, 16)
    torch.testing.assert_close(model.blocks(h), h)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_residual_block_with_zeroed_branch_is_identity(n_layers):
    torch.manual_seed(0)
    block = MLPBlock(16, n_layers, residual=True)
    last = block.branch[-2]  # the last Linear; its ReLU(0) = 0
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    x = torch.randn(7, 16)
    torch.testing.assert_close(block(x), x)
    plain = MLPBlock(16, n_layers, residual=False)
    plain.load_state_dict(block.state_dict())
    assert torch.count_nonzero(plain(x)) == 0  # without the skip the signal is gone


@pytest.mark.parametrize("bad", [dict(depth=0), dict(width=0), dict(depth=7, layers_per_block=2)])
def test_mlp_rejects_bad_sizes(bad):
    kwargs = dict(width=16, depth=8, layers_per_block=1, residual=True) | bad
    with pytest.raises(ValueError):
        MLP(**kwargs)


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("width", [4, 16])
def test_cifar_resnet_shapes_depth_and_equal_parameter_counts(n, width):
    plain, residual = CifarResNet(n, width, residual=False), CifarResNet(n, width, residual=True)
    x = torch.randn(2, 3, 32, 32)
    assert plain(x).shape == residual(x).shape == (2, 10)
    assert residual.features(x).shape == (2, 4 * width, 8, 8)
    assert residual.depth == 6 * n + 2
    assert n_params(plain) == n_params(residual)
    convs = [m for m in residual.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) + 1 == residual.depth  # conv layers + the classifier


def _zero_branch(block):
    bn = block.branch[-1]
    torch.nn.init.zeros_(bn.weight)
    torch.nn.init.zeros_(bn.bias)
    return block.eval()


def test_conv_block_with_zeroed_branch_is_identity():
    block = _zero_branch(ConvBlock(8, 8, stride=1, residual=True))
    x = torch.rand(2, 8, 16, 16)  # block inputs follow a ReLU, so they are non-negative
    torch.testing.assert_close(block(x), x)


def test_zero_padded_shortcut_across_a_stage():
    block = _zero_branch(ConvBlock(8, 16, stride=2, residual=True))
    x = torch.rand(2, 8, 16, 16)
    out = block(x)
    assert out.shape == (2, 16, 8, 8)
    torch.testing.assert_close(out[:, :8], x[:, :, ::2, ::2])
    assert torch.count_nonzero(out[:, 8:]) == 0
    torch.testing.assert_close(shortcut(x, 16, 2), out)


def test_a_checkpoint_description_rebuilds_the_same_network():
    arch = {"name": "CifarResNet", "kwargs": {"blocks_per_stage": 1, "width": 4, "residual": True,
                                              "num_classes": 10}}
    model = build_model(arch)
    assert isinstance(model, CifarResNet) and model.depth == 8
    assert n_params(model) == n_params(CifarResNet(1, 4, residual=True))
    for bad in ({"name": "ResNet50", "kwargs": {}}, {"name": "MLP", "kwargs": {"depth": 2}}, {}):
        with pytest.raises(ValueError, match="not a model description"):
            build_model(bad)
