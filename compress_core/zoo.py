"""The model zoo, defined once as graphs that both backends build.

Every builder takes a width plan ``widths = {conv_or_dense_name: out_channels}``;
names not in the plan keep their default width, so a pruned network is an
ordinary zoo model with a different plan. Layer names are the canonical
parameter prefixes of checkpoints (``layer2.3.conv1`` -> ``layer2.3.conv1.weight``).

==============  ==========================================================
name            architecture
==============  ==========================================================
resnet20..110   CIFAR ResNet (He et al. 2016), basic blocks, post-activation,
                option-A shortcut (stride-2 subsampling + zero channels)
resnet164       pre-activation bottleneck ResNet (He et al. 2016b),
                projection shortcut where the shape changes
vgg16           CIFAR VGG-16: 13 conv-BN-ReLU, 4 max-pools, GAP,
                dense 512 -> BN -> ReLU -> classes (14.98 M params at 10 classes)
densenet40      DenseNet-40, growth 12, BN-ReLU-conv layers, no compression
==============  ==========================================================
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

from compress_core.errors import UserError
from compress_core.graph import Graph, Node, bn_node, conv_node

CIFAR_RESNET_DEPTHS = (20, 32, 44, 56, 110)


class _Builder:
    """Appends nodes and resolves the width plan, remembering which names it used."""

    def __init__(self, widths: Mapping[str, int] | None):
        self.nodes = [Node("input", "input")]
        self.widths = dict(widths or {})
        for k, v in self.widths.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UserError(f"width plan: '{k}' must be a positive integer, got {v!r}")
        self.used: set[str] = set()

    def width(self, name: str, default: int) -> int:
        self.used.add(name)
        return self.widths.get(name, default)

    def add(self, node: Node) -> str:
        self.nodes.append(node)
        return node.name

    def conv(self, name, x, out, **kw) -> str:
        return self.add(conv_node(name, x, self.width(name, out), **kw))

    def bn_relu(self, prefix_bn, prefix_relu, x) -> str:
        return self.add(Node(prefix_relu, "relu", (self.add(bn_node(prefix_bn, x)),)))

    def dense(self, name, x, out, bias=True) -> str:
        return self.add(Node(name, "dense", (x,), {"out": self.width(name, out), "bias": bias}))

    def graph(self, arch, input_shape, output, **meta) -> Graph:
        unknown = sorted(set(self.widths) - self.used)
        if unknown:
            raise UserError(f"width plan names layers that {arch} does not have: {unknown[:5]}")
        g = Graph(arch, input_shape, self.nodes, output, dict(meta, widths=self.widths))
        g.shapes()  # fail at build time, not in a backend
        return g


def centered_src(cin: int, cout: int) -> tuple[int, ...]:
    """Option-A shortcut channel map: the input channels sit in the middle, zeros either side."""
    if cout < cin:
        raise UserError(f"a residual shortcut cannot narrow {cin} channels to {cout}")
    off = (cout - cin) // 2
    return tuple(j - off if off <= j < off + cin else -1 for j in range(cout))


def resnet_cifar(depth: int = 56, num_classes: int = 10, input_shape=(3, 32, 32),
                 widths: Mapping[str, int] | None = None) -> Graph:
    """CIFAR ResNet-(6n+2) with basic blocks and the parameter-free option-A shortcut.

    The residual stream of a stage takes its width from the stage's first block
    ``conv2``; the other blocks' ``conv2`` must match it (they add into the same
    stream). Where a block changes width or resolution the shortcut is a
    ``select`` node; otherwise it is the identity.
    """
    if (depth - 2) % 6 or depth < 8:
        raise UserError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
    n = (depth - 2) // 6
    b = _Builder(widths)
    x = b.conv("conv1", "input", 16)
    x = b.bn_relu("bn1", "relu", x)
    cin = b.width("conv1", 16)
    for s, planes in enumerate((16, 32, 64), start=1):
        stream = b.width(f"layer{s}.0.conv2", planes)
        for i in range(n):
            p = f"layer{s}.{i}"
            stride = 2 if (s > 1 and i == 0) else 1
            h = b.conv(f"{p}.conv1", x, planes, stride=stride)
            h = b.bn_relu(f"{p}.bn1", f"{p}.relu1", h)
            h = b.conv(f"{p}.conv2", h, stream)
            if b.width(f"{p}.conv2", stream) != stream:
                raise UserError(f"width plan: '{p}.conv2' is {b.width(f'{p}.conv2', stream)} but the "
                                f"residual stream of layer{s} is {stream} (set by 'layer{s}.0.conv2')")
            h = b.add(bn_node(f"{p}.bn2", h))
            sc = x
            if stride != 1 or cin != stream:
                sc = b.add(Node(f"{p}.shortcut", "select", (x,),
                                {"stride": stride, "src": centered_src(cin, stream)}))
            x = b.add(Node(f"{p}.relu2", "relu", (b.add(Node(f"{p}.add", "add", (h, sc))),)))
            cin = stream
    x = b.add(Node("pool", "gap", (x,)))
    out = b.dense("fc", x, num_classes)
    return b.graph(f"resnet{depth}", input_shape, out, num_classes=num_classes)


def resnet164(num_classes: int = 10, input_shape=(3, 32, 32),
              widths: Mapping[str, int] | None = None, depth: int = 164) -> Graph:
    """Pre-activation bottleneck ResNet-(9n+2): BN-ReLU-conv1x1 / conv3x3 / conv1x1 (x4).

    The shortcut of a block whose shape changes is a 1x1 projection of the
    pre-activated input (He et al., Identity Mappings, 2016).
    """
    if (depth - 2) % 9:
        raise UserError(f"bottleneck ResNet depth must be 9n+2, got {depth}")
    n = (depth - 2) // 9
    b = _Builder(widths)
    x = b.conv("conv1", "input", 16)
    cin = b.width("conv1", 16)
    for s, planes in enumerate((16, 32, 64), start=1):
        stream = b.width(f"layer{s}.0.conv3", planes * 4)
        for i in range(n):
            p = f"layer{s}.{i}"
            stride = 2 if (s > 1 and i == 0) else 1
            pre = b.bn_relu(f"{p}.bn1", f"{p}.relu1", x)
            h = b.conv(f"{p}.conv1", pre, planes, k=1)
            h = b.bn_relu(f"{p}.bn2", f"{p}.relu2", h)
            h = b.conv(f"{p}.conv2", h, planes, stride=stride)
            h = b.bn_relu(f"{p}.bn3", f"{p}.relu3", h)
            h = b.conv(f"{p}.conv3", h, stream, k=1)
            if b.width(f"{p}.conv3", stream) != stream:
                raise UserError(f"width plan: '{p}.conv3' must equal the residual stream width "
                                f"{stream} of layer{s}")
            sc = x
            if stride != 1 or cin != stream:
                sc = b.conv(f"{p}.shortcut", pre, stream, k=1, stride=stride, pad=0)
                if b.width(f"{p}.shortcut", stream) != stream:
                    raise UserError(f"width plan: '{p}.shortcut' must equal the residual stream width {stream}")
            x = b.add(Node(f"{p}.add", "add", (h, sc)))
            cin = stream
    x = b.bn_relu("bn_final", "relu_final", x)
    x = b.add(Node("pool", "gap", (x,)))
    out = b.dense("fc", x, num_classes)
    return b.graph(f"resnet{depth}", input_shape, out, num_classes=num_classes)


VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


def vgg16(num_classes: int = 10, input_shape=(3, 32, 32),
          widths: Mapping[str, int] | None = None) -> Graph:
    """CIFAR VGG-16 (the variant of DCFF/HRank): conv names ``features.0`` .. ``features.12``.

    A max-pool that would shrink a map below 1x1 (small inputs such as 8x8
    digits) is left out, so the same network runs on any input size.
    """
    b = _Builder(widths)
    x, i, size = "input", 0, min(input_shape[1:])
    for v in VGG16_CFG:
        if v == "M":
            if size >= 2:
                x = b.add(Node(f"features.pool{i}", "maxpool", (x,), {"k": 2, "stride": 2}))
                size //= 2
            continue
        x = b.conv(f"features.{i}", x, v)
        x = b.bn_relu(f"features.{i}.bn", f"features.{i}.relu", x)
        i += 1
    x = b.add(Node("pool", "gap", (x,)))
    x = b.dense("classifier.0", x, 512)
    x = b.bn_relu("classifier.0.bn", "classifier.0.relu", x)
    out = b.dense("classifier.1", x, num_classes)
    return b.graph("vgg16", input_shape, out, num_classes=num_classes)


def densenet40(num_classes: int = 10, input_shape=(3, 32, 32),
               widths: Mapping[str, int] | None = None, growth: int = 12) -> Graph:
    """DenseNet-40 (Huang et al. 2017): 3 blocks of 12 BN-ReLU-conv3x3 layers, growth 12.

    Transitions are BN-ReLU-conv1x1 (width kept) then 2x2 average pooling; each
    dense layer concatenates its ``growth`` new channels to its input.
    """
    b = _Builder(widths)
    x = b.conv("conv1", "input", 2 * growth)
    width = b.width("conv1", 2 * growth)
    for blk in range(1, 4):
        for i in range(12):
            p = f"dense{blk}.{i}"
            h = b.bn_relu(f"{p}.bn", f"{p}.relu", x)
            h = b.conv(f"{p}.conv", h, growth)
            width += b.width(f"{p}.conv", growth)
            x = b.add(Node(f"{p}.cat", "concat", (x, h)))
        if blk < 3:
            p = f"trans{blk}"
            h = b.bn_relu(f"{p}.bn", f"{p}.relu", x)
            h = b.conv(f"{p}.conv", h, width, k=1, pad=0)
            width = b.width(f"{p}.conv", width)
            x = b.add(Node(f"{p}.pool", "avgpool", (h,), {"k": 2, "stride": 2}))
    x = b.bn_relu("bn_final", "relu_final", x)
    x = b.add(Node("pool", "gap", (x,)))
    out = b.dense("fc", x, num_classes)
    return b.graph("densenet40", input_shape, out, num_classes=num_classes)


MODELS: dict[str, Callable[..., Graph]] = {
    **{f"resnet{d}": functools.partial(resnet_cifar, depth=d) for d in CIFAR_RESNET_DEPTHS},
    "resnet164": resnet164, "vgg16": vgg16, "densenet40": densenet40}


def build(name: str, num_classes: int = 10, input_shape=(3, 32, 32),
          widths: Mapping[str, int] | None = None) -> Graph:
    """The zoo graph ``name`` for ``num_classes`` classes and inputs of ``input_shape`` (C, H, W)."""
    if name not in MODELS:
        raise UserError(f"unknown model '{name}' (zoo: {', '.join(MODELS)})")
    return MODELS[name](num_classes=num_classes, input_shape=tuple(input_shape), widths=widths)
