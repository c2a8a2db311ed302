"""ResNet backbone: torchvision's ResNet-50 state_dict keys and shapes, outputs by name, save/load, frozen BN."""
import torch

from localfeat.extractors._resnet import ResNet, FrozenBatchNorm2d, freeze_batchnorm


def _bn(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def torchvision_resnet50_manifest() -> dict:
    """Keys and shapes of torchvision.models.resnet50().state_dict(), written from torchvision's published
    configuration: Bottleneck, layers [3, 4, 6, 3], widths 64/128/256/512, expansion 4, 1000 classes."""
    m = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    inplanes = 64
    for li, (planes, n) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for b in range(n):
            p = f"layer{li}.{b}"
            m[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            m.update(_bn(f"{p}.bn1", planes))
            m[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            m.update(_bn(f"{p}.bn2", planes))
            m[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            m.update(_bn(f"{p}.bn3", planes * 4))
            if b == 0:
                m[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                m.update(_bn(f"{p}.downsample.1", planes * 4))
            inplanes = planes * 4
    m["fc.weight"] = (1000, 2048)
    m["fc.bias"] = (1000,)
    return m


def test_state_dict_equals_torchvision_resnet50():
    sd = ResNet("resnet50").state_dict()
    manifest = torchvision_resnet50_manifest()
    assert list(sd) == list(manifest)          # same keys, same order as torchvision
    assert {k: tuple(v.shape) for k, v in sd.items()} == manifest
    assert len(sd) == 320
    # torchvision's documented parameter count of ResNet-50
    assert sum(p.numel() for p in ResNet("resnet50").parameters()) == 25_557_032


def test_outputs_by_name_and_strides():
    torch.manual_seed(0)
    net = ResNet("resnet18", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 96)
    out = net(x, outputs=("stem", "layer1", "layer2", "layer3", "layer4", "logits"))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "stem": (1, 64, 16, 24), "layer1": (1, 64, 16, 24), "layer2": (1, 128, 8, 12),
        "layer3": (1, 256, 4, 6), "layer4": (1, 512, 2, 3), "logits": (1, 10)}
    assert list(net(x, outputs=("layer2",))) == ["layer2"]


def test_save_load_round_trip_gives_identical_output(tmp_path):
    torch.manual_seed(0)
    net = ResNet("resnet50").eval()
    x = torch.linspace(-2, 2, 3 * 64 * 64).reshape(1, 3, 64, 64)
    before = net(x, outputs=("layer3", "logits"))
    torch.save(net.state_dict(), tmp_path / "r50.pth")
    torch.manual_seed(1)
    other = ResNet("resnet50").eval()
    assert not torch.equal(other(x, outputs=("layer3",))["layer3"], before["layer3"])
    other.load_state_dict(torch.load(tmp_path / "r50.pth", weights_only=True), strict=True)
    after = other(x, outputs=("layer3", "logits"))
    assert torch.equal(before["layer3"], after["layer3"]) and torch.equal(before["logits"], after["logits"])


def test_frozen_batchnorm_keeps_keys_and_eval_output():
    torch.manual_seed(0)
    net = ResNet("resnet18").eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 32, 32)
    ref = net(x, outputs=("layer4",))["layer4"]
    keys = list(net.state_dict())
    freeze_batchnorm(net)
    net.train()  # frozen statistics: train mode does not change them
    assert isinstance(net.bn1, FrozenBatchNorm2d) and list(net.state_dict()) == keys
    torch.testing.assert_close(net(x, outputs=("layer4",))["layer4"], ref, rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for n, p in net.named_parameters() if "bn" in n)
