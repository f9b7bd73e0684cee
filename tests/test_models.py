"""The model zoo and the generator, on CPU with batches of two."""
import pytest
import torch
import torch.nn as nn

from models import MODELS, Generator, ModelError, build_model, init_generator_

# (channels, size, classes) of every dataset the project knows
SHAPES = {"mnist": (1, 28, 10), "cifar10": (3, 32, 10), "cifar100": (3, 32, 100),
          "tinyimagenet": (3, 64, 200), "imagenet12": (3, 64, 12)}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Batches of two gain nothing from intra-op threads, and on a shared machine
    the thread pool's spin-waits made a resnet50 pass 30x slower (2 s vs 0.06 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("net", sorted(MODELS))
def test_every_net_maps_a_batch_to_logits(net, shape):
    channels, size, classes = shape
    torch.manual_seed(0)
    model = build_model(net, channels, size, classes).eval()
    with torch.no_grad():
        out = model(torch.rand(2, channels, size, size))
    assert out.shape == (2, classes)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("net", sorted(MODELS))
def test_every_net_takes_its_smallest_declared_size(net):
    """The registry's min_size/divisor are promises: the smallest size they allow must work."""
    entry = MODELS[net]
    size = -(-entry.min_size // entry.divisor) * entry.divisor
    torch.manual_seed(0)
    model = build_model(net, 3, size, 7).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, size, size)).shape == (2, 7)


def test_unknown_net_lists_the_known_ones():
    with pytest.raises(ModelError) as err:
        build_model("resnet9000", 3, 32, 10)
    for name in MODELS:
        assert name in str(err.value)


@pytest.mark.parametrize("net, size", [("lenet", 30), ("lenet5", 8), ("lenet5", 30), ("cnn", 30), ("alexnet", 4), ("vgg8", 8),
                                       ("resnet18", 4)])
def test_a_size_the_net_cannot_take_is_a_model_error(net, size):
    with pytest.raises(ModelError) as err:
        build_model(net, 3, size, 10)
    assert f"'{net}'" in str(err.value)
    assert f"{size}px" in str(err.value)


def test_mlp_returns_logits_not_probabilities():
    torch.manual_seed(0)
    model = build_model("mlp", 1, 28, 10).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 28, 28))
    assert (out < 0).any()
    assert not torch.allclose(out.sum(1), torch.ones(2), atol=1e-3)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 32, 64])
def test_generator_makes_images_in_unit_range(size, channels):
    torch.manual_seed(0)
    generator = Generator(nz=8, ngf=4, channels=channels, size=size)
    x = generator(torch.randn(2, 8))
    assert x.shape == (2, channels, size, size)
    assert x.min() >= 0 and x.max() <= 1
    generator.eval()
    with torch.no_grad():
        assert generator(torch.randn(2, 8)).shape == (2, channels, size, size)


@pytest.mark.parametrize("size", [30, 33, 62])
def test_generator_rejects_a_size_not_a_multiple_of_4(size):
    with pytest.raises(ValueError, match=str(size)):
        Generator(nz=8, ngf=4, channels=3, size=size)


def perturbed_generator():
    """A wide generator whose every parameter and BN statistic is far from its init."""
    torch.manual_seed(0)
    generator = Generator(nz=64, ngf=64, channels=3, size=32)
    with torch.no_grad():
        for p in generator.parameters():
            p.fill_(3.0)
    for m in generator.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(5.0)
            m.running_var.fill_(7.0)
            m.num_batches_tracked.fill_(11)
    return generator


def test_init_generator_resets_every_layer():
    generator = perturbed_generator()
    assert init_generator_(generator) is generator
    kinds = {nn.Linear: 0, nn.Conv2d: 0, nn.BatchNorm2d: 0}
    for m in generator.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            kinds[type(m)] += 1
            w = m.weight.detach()
            # the smallest weight (ngf*channels*9 = 1728 entries) keeps the sample std within ~2%
            assert abs(w.mean().item()) < 2e-3, m
            assert w.std().item() == pytest.approx(0.02, rel=0.1), m
            if m.bias is not None:
                assert torch.equal(m.bias.detach(), torch.zeros_like(m.bias))
        elif isinstance(m, nn.BatchNorm2d):
            kinds[nn.BatchNorm2d] += 1
            w = m.weight.detach()
            assert w.mean().item() == pytest.approx(1.0, abs=0.01), m
            assert w.std().item() == pytest.approx(0.02, rel=0.35), m
            assert torch.equal(m.bias.detach(), torch.zeros_like(m.bias))
            assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
            assert torch.equal(m.running_var, torch.ones_like(m.running_var))
            assert m.num_batches_tracked.item() == 0
    assert kinds == {nn.Linear: 1, nn.Conv2d: 3, nn.BatchNorm2d: 3}


def test_init_generator_draws_afresh_each_call():
    generator = perturbed_generator()
    first = [p.detach().clone() for p in init_generator_(generator).parameters()]
    second = [p.detach().clone() for p in init_generator_(generator).parameters()]
    weights = [(a, b) for a, b in zip(first, second) if a.dim() > 1]  # conv/linear weights
    assert weights and all(not torch.equal(a, b) for a, b in weights)
