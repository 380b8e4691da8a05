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
resnet50        ImageNet ResNet-50 v1.5 (torchvision layout and names, stride
                on the 3x3 conv; 25.56 M params, 4.09 G MACs at 224x224)
resnext20, 164  CIFAR ResNeXt 32x1d of Hinge's reference: 1x1 stem, grouped
                bottlenecks (expansion 2), projection shortcut + BN
wrn16_10        Wide ResNet-16-10 of Hinge's reference: pre-activation
                wide_basic blocks, biased convs (17.18 M params at 100 classes)
mobilenetv2     MobileNetV2, torchvision's layout and names (CIFAR strides
                on inputs of 64 pixels or less)
googlenet       CIFAR GoogLeNet of KSE / HRank / DCFF (kuangliu's layout)
==============  ==========================================================
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

from compress_core.errors import UserError
from compress_core.ir.graph import Graph, Node, bn_node, conv_node

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


RESNET50_BLOCKS = (3, 4, 6, 3)


def resnet50(num_classes: int = 1000, input_shape=(3, 224, 224),
             widths: Mapping[str, int] | None = None) -> Graph:
    """ImageNet ResNet-50 v1.5, torchvision's layout, so its checkpoints map by name.

    Stem: conv1 7x7/2 (pad 3) - bn1 - relu - maxpool 3x3/2 (pad 1, -inf). Stage
    ``s`` has ``(3, 4, 6, 3)[s-1]`` bottlenecks conv1 1x1 - conv2 3x3 (stride 2 in
    the first block of stages 2-4) - conv3 1x1 with 4x expansion, post-activation:
    ``relu(bn3(conv3(...)) + shortcut)``. The first block of every stage has a
    projection shortcut ``downsample.0`` (1x1 conv, same stride) + ``downsample.1``
    (BN). The residual stream of stage ``s`` takes its width from
    ``layer{s}.0.conv3``; every other ``conv3`` and the ``downsample.0`` of the
    stage must match it. Then global average pooling and ``fc``.
    """
    b = _Builder(widths)
    x = b.conv("conv1", "input", 64, k=7, stride=2, pad=3)
    x = b.bn_relu("bn1", "relu", x)
    x = b.add(Node("maxpool", "maxpool", (x,), {"k": 3, "stride": 2, "pad": 1}))
    for s, (planes, blocks) in enumerate(zip((64, 128, 256, 512), RESNET50_BLOCKS), start=1):
        stream = b.width(f"layer{s}.0.conv3", planes * 4)
        for i in range(blocks):
            p = f"layer{s}.{i}"
            stride = 2 if (s > 1 and i == 0) else 1
            h = b.conv(f"{p}.conv1", x, planes, k=1, pad=0)
            h = b.bn_relu(f"{p}.bn1", f"{p}.relu1", h)
            h = b.conv(f"{p}.conv2", h, planes, stride=stride)
            h = b.bn_relu(f"{p}.bn2", f"{p}.relu2", h)
            h = b.conv(f"{p}.conv3", h, stream, k=1, pad=0)
            h = b.add(bn_node(f"{p}.bn3", h))
            sc = x
            if i == 0:
                sc = b.conv(f"{p}.downsample.0", x, stream, k=1, stride=stride, pad=0)
                sc = b.add(bn_node(f"{p}.downsample.1", sc))
            _check_stream(b, (f"{p}.conv3", f"{p}.downsample.0"), stream, f"layer{s}.0.conv3")
            x = b.add(Node(f"{p}.relu3", "relu", (b.add(Node(f"{p}.add", "add", (h, sc))),)))
    x = b.add(Node("avgpool", "gap", (x,)))
    out = b.dense("fc", x, num_classes)
    return b.graph("resnet50", input_shape, out, num_classes=num_classes)


def resnext(depth: int = 20, cardinality: int = 32, bottleneck_width: int = 1, num_classes: int = 10,
            input_shape=(3, 32, 32), widths: Mapping[str, int] | None = None) -> Graph:
    """CIFAR ResNeXt-(9n+2), ``cardinality`` x ``bottleneck_width``d, as Hinge's ``model/resnext.py``.

    Stem: 1x1 conv 3 -> 64 (the reference's kernel size) - bn1 - relu. Three stages
    of ``n = (depth - 2) / 9`` post-activation blocks; stage ``s`` has path width
    ``w_s = bottleneck_width * 2**(s-1)`` and group width ``g_s = cardinality * w_s``:
    ``conv1`` 1x1 -> g_s, ``conv2`` 3x3 grouped (``groups`` = paths, stride 2 in the
    first block of stages 2 and 3), ``conv3`` 1x1 -> 2 g_s (expansion 2), and
    ``relu(bn3(conv3) + shortcut)``. The shortcut is ``shortcut.0`` (1x1 conv, same
    stride) + ``shortcut.1`` (BN) where the shape changes, else the identity. Global
    average pooling (the reference's 8x8 average pool at 32x32) and ``linear``.
    Names are the reference's, so its checkpoints map by name.

    Width plan: ``layer{s}.{i}.conv1`` must be a multiple of ``w_s`` and sets the
    number of paths (``conv2`` groups), so Hinge's pruning of whole paths is a plan;
    ``conv2`` must equal ``conv1``; ``layer{s}.0.conv3`` sets the residual stream.
    Parameters at 10 classes (hand counts in the tests): ResNeXt-20 (32x1d) 211,850
    (35.52 M MACs at 32x32); ResNeXt-164 1,713,546.
    """
    if (depth - 2) % 9 or depth < 11:
        raise UserError(f"ResNeXt depth must be 9n+2 (20, 29, 164), got {depth}")
    for name, v in (("cardinality", cardinality), ("bottleneck_width", bottleneck_width)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise UserError(f"ResNeXt {name} must be a positive integer, got {v!r}")
    n = (depth - 2) // 9
    b = _Builder(widths)
    x = b.conv("conv1", "input", 64, k=1, pad=0)
    x = b.bn_relu("bn1", "relu", x)
    cin = b.width("conv1", 64)
    for s in range(1, 4):
        path = bottleneck_width * 2 ** (s - 1)
        stream = b.width(f"layer{s}.0.conv3", 2 * cardinality * path)
        for i in range(n):
            p = f"layer{s}.{i}"
            stride = 2 if (s > 1 and i == 0) else 1
            inner = b.width(f"{p}.conv1", cardinality * path)
            if inner % path or b.width(f"{p}.conv2", inner) != inner:
                raise UserError(f"width plan: '{p}.conv1' ({inner}) must be a multiple of the path width "
                                f"{path} and '{p}.conv2' must equal it")
            h = b.conv(f"{p}.conv1", x, inner, k=1, pad=0)
            h = b.bn_relu(f"{p}.bn1", f"{p}.relu1", h)
            h = b.conv(f"{p}.conv2", h, inner, stride=stride, groups=inner // path)
            h = b.bn_relu(f"{p}.bn2", f"{p}.relu2", h)
            h = b.add(bn_node(f"{p}.bn3", b.conv(f"{p}.conv3", h, stream, k=1, pad=0)))
            sc = x
            if stride != 1 or cin != stream:
                sc = b.conv(f"{p}.shortcut.0", x, stream, k=1, stride=stride, pad=0)
                sc = b.add(bn_node(f"{p}.shortcut.1", sc))
            _check_stream(b, (f"{p}.conv3", f"{p}.shortcut.0"), stream, f"layer{s}.0.conv3")
            x = b.add(Node(f"{p}.relu3", "relu", (b.add(Node(f"{p}.add", "add", (h, sc))),)))
            cin = stream
    x = b.add(Node("pool", "gap", (x,)))
    out = b.dense("linear", x, num_classes)
    return b.graph(f"resnext{depth}", input_shape, out, num_classes=num_classes,
                   cardinality=cardinality, bottleneck_width=bottleneck_width)


def wide_resnet(depth: int = 16, widen: int = 10, num_classes: int = 10, input_shape=(3, 32, 32),
                widths: Mapping[str, int] | None = None, final_bn_momentum: float = 0.9) -> Graph:
    """Wide ResNet-depth-widen (Zagoruyko & Komodakis 2016) as Hinge's ``model/wide_resnet.py``.

    Stem: 3x3 conv 3 -> 16 with bias. Three stages of ``n = (depth - 4) / 6``
    pre-activation ``wide_basic`` blocks of width ``16 k, 32 k, 64 k``:
    ``conv2(relu(bn2(conv1(relu(bn1(x)))))) + shortcut(x)``, both 3x3 convs with
    bias, the stride (2 in the first block of stages 2 and 3) on ``conv2``, no
    dropout, and ``shortcut.0`` a 1x1 conv with bias of the raw (not
    pre-activated) input where the shape changes, else the identity. Then
    ``bn1`` - relu - global average pooling - ``linear``. The final BN keeps the
    reference's ``momentum=0.9`` (PyTorch convention: running stats follow the
    last batches); ``final_bn_momentum`` overrides it. Names are the reference's.

    WRN-16-10 at 100 classes: 17,179,940 parameters (hand count in the tests).
    The residual stream of stage ``s`` takes its width from ``layer{s}.0.conv2``.
    """
    if (depth - 4) % 6 or depth < 10:
        raise UserError(f"Wide ResNet depth must be 6n+4 (10, 16, 22, 28, 40), got {depth}")
    if not isinstance(widen, int) or isinstance(widen, bool) or widen < 1:
        raise UserError(f"Wide ResNet widen factor must be a positive integer, got {widen!r}")
    n = (depth - 4) // 6
    b = _Builder(widths)
    x = b.conv("conv1", "input", 16, bias=True)
    cin = b.width("conv1", 16)
    for s, planes in enumerate((16 * widen, 32 * widen, 64 * widen), start=1):
        stream = b.width(f"layer{s}.0.conv2", planes)
        for i in range(n):
            p = f"layer{s}.{i}"
            stride = 2 if (s > 1 and i == 0) else 1
            h = b.bn_relu(f"{p}.bn1", f"{p}.relu1", x)
            h = b.conv(f"{p}.conv1", h, planes, bias=True)
            h = b.bn_relu(f"{p}.bn2", f"{p}.relu2", h)
            h = b.conv(f"{p}.conv2", h, stream, stride=stride, bias=True)
            sc = x
            if stride != 1 or cin != stream:
                sc = b.conv(f"{p}.shortcut.0", x, stream, k=1, stride=stride, pad=0, bias=True)
            _check_stream(b, (f"{p}.conv2", f"{p}.shortcut.0"), stream, f"layer{s}.0.conv2")
            x = b.add(Node(f"{p}.add", "add", (h, sc)))
            cin = stream
    x = b.add(Node("relu", "relu", (b.add(bn_node("bn1", x, momentum=final_bn_momentum)),)))
    x = b.add(Node("pool", "gap", (x,)))
    out = b.dense("linear", x, num_classes)
    return b.graph(f"wrn{depth}_{widen}", input_shape, out, num_classes=num_classes)


def _check_stream(b: _Builder, names, stream: int, owner: str) -> None:
    """Layers adding into one residual stream must all have its width."""
    for name in names:
        if name in b.used and b.width(name, stream) != stream:
            raise UserError(f"width plan: '{name}' is {b.width(name, stream)} but the residual "
                            f"stream is {stream} (set by '{owner}')")


MOBILENETV2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                        (6, 320, 1, 1))


def mobilenetv2(num_classes: int = 10, input_shape=(3, 32, 32), widths: Mapping[str, int] | None = None,
                dropout: float = 0.2) -> Graph:
    """MobileNetV2 (Sandler et al. 2018) in torchvision's layout and names, so its state_dicts map.

    Stem ``features.0`` 3x3 conv (32) - BN - ReLU6; inverted residual blocks ``features.1..17``
    (expansion ``t``, width ``c``, repeats ``n``, stride ``s`` of the paper's table): a 1x1 expand conv
    (when ``t > 1``), a 3x3 depthwise conv, a 1x1 linear projection, each with BN (ReLU6 after the first
    two), and the identity added where the shape stays; ``features.18`` 1x1 conv to 1280 - BN - ReLU6;
    global average pooling, dropout, ``classifier.1``. On inputs of 64 pixels or less (CIFAR) the stem
    and the second stage have stride 1, as the CIFAR variants of the DCFF and Hinge experiments.
    The width plan sets every conv; a block's projection must keep the stream's width where it adds.
    """
    b = _Builder(widths)
    small = min(input_shape[1:]) <= 64

    def conv_bn(name, x, out, k, stride, groups=1, act=True):
        pad = (k - 1) // 2
        h = b.conv(f"{name}.0", x, out, k=k, stride=stride, pad=pad, groups=groups)
        h = b.add(bn_node(f"{name}.1", h))
        return b.add(Node(f"{name}.2", "relu6", (h,))) if act else h

    x = conv_bn("features.0", "input", 32, 3, 1 if small else 2)
    cin, i = b.width("features.0.0", 32), 1
    for stage, (t, c, n, s) in enumerate(MOBILENETV2_SETTINGS):
        for r in range(n):
            stride = (1 if small and stage == 1 else s) if r == 0 else 1
            p = f"features.{i}.conv"
            h, j, hidden = x, 0, cin * t
            if t != 1:
                h = conv_bn(f"{p}.0", h, hidden, 1, 1)
                hidden, j = b.width(f"{p}.0.0", hidden), 1
            h = conv_bn(f"{p}.{j}", h, hidden, 3, stride, groups=hidden)
            if b.width(f"{p}.{j}.0", hidden) != hidden:
                raise UserError(f"width plan: the depthwise conv '{p}.{j}.0' must keep its {hidden} channels")
            h = b.conv(f"{p}.{j + 1}", h, c, k=1, pad=0)
            h = b.add(bn_node(f"{p}.{j + 2}", h))
            out = b.width(f"{p}.{j + 1}", c)
            if stride == 1 and cin == c:
                if out != cin:
                    raise UserError(f"width plan: '{p}.{j + 1}' adds into a stream of {cin} channels, got {out}")
                h = b.add(Node(f"features.{i}.add", "add", (x, h)))
            x, cin, i = h, out, i + 1
    x = conv_bn(f"features.{i}", x, 1280, 1, 1)
    x = b.add(Node("pool", "gap", (x,)))
    x = b.add(Node("classifier.0", "dropout", (x,), {"p": float(dropout), "mode": "element"}))
    out = b.dense("classifier.1", x, num_classes)
    return b.graph("mobilenetv2", input_shape, out, num_classes=num_classes)


GOOGLENET_CFG = (("a3", 192, 64, 96, 128, 16, 32, 32), ("b3", 256, 128, 128, 192, 32, 96, 64), "M",
                 ("a4", 480, 192, 96, 208, 16, 48, 64), ("b4", 512, 160, 112, 224, 24, 64, 64),
                 ("c4", 512, 128, 128, 256, 24, 64, 64), ("d4", 512, 112, 144, 288, 32, 64, 64),
                 ("e4", 528, 256, 160, 320, 32, 128, 128), "M",
                 ("a5", 832, 256, 160, 320, 32, 128, 128), ("b5", 832, 384, 192, 384, 48, 128, 128))


def googlenet(num_classes: int = 10, input_shape=(3, 32, 32), widths: Mapping[str, int] | None = None) -> Graph:
    """CIFAR GoogLeNet of the KSE and HRank/DCFF experiments (kuangliu's layout and names).

    ``pre_layers`` 3x3 conv (192) - BN - ReLU; inception modules ``a3, b3`` - max-pool 3/2 -
    ``a4 .. e4`` - max-pool - ``a5, b5``, each four branches concatenated: ``b1`` 1x1; ``b2`` 1x1 - 3x3;
    ``b3`` 1x1 - 3x3 - 3x3 (the 5x5 as two 3x3); ``b4`` max-pool 3/1 - 1x1; every conv with bias, BN and
    ReLU; global average pooling and ``linear``. 6.17 M parameters, 1.53 G MACs at 32x32 (10 classes).
    The width plan sets any conv (a module's input is the concatenation of the branches before it).
    """
    b = _Builder(widths)

    def cbr(prefix, x, out, k, idx):
        h = b.conv(f"{prefix}.{idx}", x, out, k=k, pad=(k - 1) // 2, bias=True)
        return b.add(Node(f"{prefix}.{idx + 2}", "relu", (b.add(bn_node(f"{prefix}.{idx + 1}", h)),)))

    x = cbr("pre_layers", "input", 192, 3, 0)
    for i, m in enumerate(GOOGLENET_CFG):
        if m == "M":
            x = b.add(Node(f"maxpool{i}", "maxpool", (x,), {"k": 3, "stride": 2, "pad": 1}))
            continue
        name, _, n1, n3r, n3, n5r, n5, pool = m
        br1 = cbr(f"{name}.b1", x, n1, 1, 0)
        br2 = cbr(f"{name}.b2", cbr(f"{name}.b2", x, n3r, 1, 0), n3, 3, 3)
        br3 = cbr(f"{name}.b3", cbr(f"{name}.b3", cbr(f"{name}.b3", x, n5r, 1, 0), n5, 3, 3), n5, 3, 6)
        pooled = b.add(Node(f"{name}.b4.0", "maxpool", (x,), {"k": 3, "stride": 1, "pad": 1}))
        br4 = cbr(f"{name}.b4", pooled, pool, 1, 1)
        x = b.add(Node(f"{name}.cat", "concat", (br1, br2, br3, br4)))
    x = b.add(Node("avgpool", "gap", (x,)))
    out = b.dense("linear", x, num_classes)
    return b.graph("googlenet", input_shape, out, num_classes=num_classes)


MODELS: dict[str, Callable[..., Graph]] = {
    **{f"resnet{d}": functools.partial(resnet_cifar, depth=d) for d in CIFAR_RESNET_DEPTHS},
    "resnet164": resnet164, "vgg16": vgg16, "densenet40": densenet40, "resnet50": resnet50,
    "resnext20": functools.partial(resnext, depth=20), "resnext164": functools.partial(resnext, depth=164),
    "wrn16_10": functools.partial(wide_resnet, depth=16, widen=10), "mobilenetv2": mobilenetv2,
    "googlenet": googlenet}


def build(name: str, num_classes: int = 10, input_shape=(3, 32, 32),
          widths: Mapping[str, int] | None = None) -> Graph:
    """The zoo graph ``name`` for ``num_classes`` classes and inputs of ``input_shape`` (C, H, W)."""
    if name not in MODELS:
        raise UserError(f"unknown model '{name}' (zoo: {', '.join(MODELS)})")
    return MODELS[name](num_classes=num_classes, input_shape=tuple(input_shape), widths=widths)
