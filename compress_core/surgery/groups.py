"""Channel groups: every set of channels that must be cut together, read off a graph.

This is the dependency graph of structured pruning (Torch-Pruning's
``DependencyGraph``), computed from the framework-neutral :class:`Graph` alone, so
it works the same for the zoo, for imported models and in every backend.

**Channel spaces.** Every producer (the network input, a conv, a dense layer, a
``select``) opens a channel space: the channels of its output. Operators that
keep channels one to one pass spaces on (``bn``, ``relu``, pools, ``gap``); a
``concat`` lays the spaces of its inputs side by side (readers see each at an
offset); ``flatten`` expands every channel into its ``H*W`` columns. Two kinds of
ties join spaces into one group:

* a residual ``add`` identifies its inputs channel for channel (one space), and so does a
  ``mul`` (a squeeze-and-excitation scale multiplies channel ``c`` of the map);
* a grouped conv (``1 < groups``) ties its input and its output space: conv group
  ``k`` reads input block ``k`` and writes output block ``k``, so removing a block
  on one side removes it on the other. A depthwise conv is the case of blocks of
  one input channel: its channels belong to its input's group. A ``diagonal``
  layer with as many outputs as inputs maps channel ``j`` to channel ``j`` and
  ties its two spaces the same way.

**Units.** A group is cut in units: ``width`` units, each a block of
``size = space width / width`` consecutive channels of every space in it. Plain
spaces have units of one channel; a space read by a grouped conv of ``g`` groups is
cut in whole conv groups, so the group's unit count divides ``gcd`` of every
tied width and every ``g`` (ResNeXt: a unit is a path of the bottleneck).

**Members** say what a cut touches (:class:`Member`): producer rows (conv and
dense weights and biases, a fused conv's fusion rows, ``select`` entries),
BatchNorm entries, readers' input columns (at their offset, times the ``flatten``
expansion), ``select`` sources, grouped convs (rows and their ``groups``).

**Pinned groups** cannot be cut (``ChannelGroup.cuttable`` is False, ``reason``
says why): the network input, the logits, the channels of a ``diagonal`` layer
with unequal widths, a grouped conv that reads a concatenation, an ``add`` of
differently concatenated maps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from compress_core.errors import UserError
from compress_core.ir.graph import ELEMENTWISE, Graph

#: operators that pass every channel through unchanged (one output channel per input channel)
PASS = ("maxpool", "avgpool", "gap", "adaptive_avgpool", *ELEMENTWISE)
#: member kinds (see :class:`Member`)
KINDS = ("out", "fused", "bn", "in", "grouped", "diagonal", "select_out", "select_in")


@dataclass(frozen=True)
class Member:
    """One place a group's channels live.

    Unit ``u`` of the group is the indices ``offset + (u * size + j) * expand + p``
    (``j < size``, ``p < expand``) of the member's channel axis: ``size`` channels,
    each ``expand`` consecutive columns for a reader of a flattened map (``offset``
    is then in columns too). ``kind``:

    ``out``       rows of a conv or dense ``weight`` (and ``bias``): the producer;
    ``fused``     rows of a fused conv's ``fusion`` (its raw filters stay);
    ``bn``        the four vectors of a BatchNorm;
    ``in``        columns (axis 1) of a conv, dense or diagonal ``weight``: a reader;
    ``grouped``   rows of a grouped conv whose input is in the same group (its
                  ``groups`` shrinks with the cut; its own columns are per group);
    ``diagonal``  the weights and bias of a ``diagonal`` layer with equal widths;
    ``select_out`` entries of a ``select``'s channel map (its output);
    ``select_in`` values of a ``select``'s channel map (it reads the channels).
    """

    node: str
    kind: str
    offset: int = 0
    size: int = 1
    expand: int = 1


@dataclass(frozen=True)
class ChannelGroup:
    """A set of channels cut together: ``width`` units and the :class:`Member` s holding them.

    ``id`` is stable for a given graph: the first producer of the group in graph
    order (``input`` for the network input). ``channels`` is the width of its
    spaces in channels (``width * size`` of each member's unit).
    """

    id: str
    width: int
    members: tuple[Member, ...]
    cuttable: bool = True
    reason: str = ""
    spaces: tuple[str, ...] = field(default=(), compare=False)

    def of_kind(self, *kinds: str) -> list[Member]:
        return [m for m in self.members if m.kind in kinds]

    @property
    def producers(self) -> list[Member]:
        """Members whose rows make the channels (conv/dense rows, fused rows, grouped rows, selects)."""
        return self.of_kind("out", "fused", "grouped", "diagonal", "select_out")

    @property
    def readers(self) -> list[Member]:
        """Members that read the channels (input columns, select sources, grouped convs)."""
        return self.of_kind("in", "select_in", "grouped", "diagonal")


class _Spaces:
    """Union-find over channel spaces, with the pins and the grouped-conv divisors of each class."""

    def __init__(self):
        self.parent: dict[str, str] = {}
        self.width: dict[str, int] = {}
        self.order: list[str] = []
        self.pins: dict[str, str] = {}
        self.divisors: dict[str, list[int]] = {}

    def new(self, name: str, width: int) -> str:
        self.parent[name], self.width[name] = name, int(width)
        self.order.append(name)
        return name

    def find(self, a: str) -> str:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        # the earlier space names the class (group ids follow graph order)
        first, second = (ra, rb) if self.order.index(ra) < self.order.index(rb) else (rb, ra)
        self.parent[second] = first
        if second in self.pins:
            self.pins.setdefault(first, self.pins.pop(second))
        self.divisors.setdefault(first, []).extend(self.divisors.pop(second, []))

    def pin(self, space: str, reason: str) -> None:
        self.pins.setdefault(self.find(space), reason)

    def divide(self, space: str, g: int) -> None:
        self.divisors.setdefault(self.find(space), []).append(int(g))


# a node's output as segments of spaces: (space, channel offset in the map, channels, expansion)
_Seg = tuple[str, int, int, int]


def channel_groups(graph: Graph) -> list[ChannelGroup]:
    """Every group of channels of ``graph`` that must be cut together, in graph order (module docstring)."""
    shapes = graph.shapes()
    sp = _Spaces()
    segs: dict[str, list[_Seg]] = {}
    raw: list[tuple[str, Member]] = []  # (space, member with offset in channels and size 1)

    def readers_of(node: str, kind: str, ins: list[_Seg]) -> None:
        for space, off, count, expand in ins:
            del count
            raw.append((space, Member(node, kind, off, 1, expand)))

    def pin_all(ins: list[_Seg], reason: str) -> None:
        for space, *_ in ins:
            sp.pin(space, reason)

    def produce(n, ins: list[_Seg], width: int, read: str, made: str) -> str:
        """``n`` reads ``ins`` as ``read`` members and opens a space of ``width`` it makes as ``made``."""
        readers_of(n.name, read, ins)
        space = sp.new(n.name, width)
        raw.append((space, Member(n.name, made)))
        segs[n.name] = [(space, 0, width, 1)]
        return space

    for n in graph.nodes:
        a, op = n.attrs, n.op
        ins = segs[n.inputs[0]] if n.inputs else []
        width = shapes[n.name][0]
        if op == "input":
            segs[n.name] = [(sp.new(n.name, width), 0, width, 1)]
            sp.pin(n.name, "the network input")
        elif op == "conv":
            g = int(a["groups"])
            if g == 1:
                produce(n, ins, width, "in", "fused" if "fused_from" in a else "out")
            elif len(ins) == 1 and ins[0][3] == 1:
                space = produce(n, [], width, "in", "grouped")
                sp.union(ins[0][0], space)  # block k of the input feeds block k of the output
                sp.divide(space, g)
            else:
                pin_all(ins, f"grouped conv '{n.name}' reads a concatenation")
                sp.pin(produce(n, [], width, "in", "out"), f"grouped conv '{n.name}' reads a concatenation")
        elif op == "dense":
            produce(n, ins, width, "in", "out")
        elif op == "diagonal":
            cin = shapes[n.inputs[0]][0]
            if cin == width and len(ins) == 1 and ins[0][3] == 1:
                raw.append((ins[0][0], Member(n.name, "diagonal")))
                segs[n.name] = ins
            else:
                reason = f"diagonal '{n.name}' maps {cin} channels one to one onto {width}"
                pin_all(ins, reason)
                space = sp.new(n.name, width)
                sp.pin(space, reason)
                segs[n.name] = [(space, 0, width, 1)]
        elif op == "select":
            produce(n, ins, width, "select_in", "select_out")
        elif op == "bn":
            for space, off, _, expand in ins:
                raw.append((space, Member(n.name, "bn", off, 1, expand)))
            segs[n.name] = ins
        elif op in PASS:
            segs[n.name] = ins
        elif op == "flatten":
            hw = math.prod(shapes[n.inputs[0]][1:]) if len(shapes[n.inputs[0]]) > 1 else 1
            segs[n.name] = [(space, off * hw, count, expand * hw) for space, off, count, expand in ins]
        elif op == "concat":
            out, off = [], 0
            for i in n.inputs:
                out += [(space, off + o, count, expand) for space, o, count, expand in segs[i]]
                off += shapes[i][0]
            segs[n.name] = out
        elif op in ("add", "mul"):
            # channel c of every input meets channel c of the others (a squeeze-and-excitation scale
            # multiplies channel c of the map): one group
            first = ins
            for other in (segs[i] for i in n.inputs[1:]):
                if [(o, c, e) for _, o, c, e in first] == [(o, c, e) for _, o, c, e in other]:
                    for (s1, *_), (s2, *_) in zip(first, other):
                        sp.union(s1, s2)
                else:
                    pin_all(first + other, f"{op} '{n.name}' combines differently concatenated maps")
            segs[n.name] = first
        else:  # pragma: no cover - Graph validates ops
            raise UserError(f"channel groups: unknown op '{op}' in node '{n.name}'")
    pin_all(segs[graph.output], "the network output")
    return _collect(sp, raw)


def _collect(sp: _Spaces, raw: list[tuple[str, Member]]) -> list[ChannelGroup]:
    classes: dict[str, list[str]] = {}
    for s in sp.order:
        classes.setdefault(sp.find(s), []).append(s)
    members: dict[str, list[tuple[str, Member]]] = {root: [] for root in classes}
    for space, m in raw:
        members[sp.find(space)].append((space, m))
    out = []
    for root, spaces in classes.items():
        units = 0
        for v in [sp.width[s] for s in spaces] + sp.divisors.get(root, []):
            units = math.gcd(units, v)
        ms = tuple(Member(m.node, m.kind, m.offset, sp.width[s] // units, m.expand) for s, m in members[root])
        reason = sp.pins.get(root, "")
        out.append(ChannelGroup(root, units, ms, not reason, reason, tuple(spaces)))
    return out


def cuttable_group(by_id: dict[str, ChannelGroup], gid: str, what: str) -> ChannelGroup:
    """``by_id[gid]``, or a one-line :class:`UserError` when there is no such group or it is pinned."""
    g = by_id.get(gid)
    if g is None:
        raise UserError(f"{what} names no channel group '{gid}' (groups: {', '.join(list(by_id)[:6])}, ...)")
    if not g.cuttable:
        raise UserError(f"channel group '{gid}' cannot be cut: {g.reason}")
    return g


def group_of(groups: list[ChannelGroup], node: str, kinds=("out", "fused", "grouped", "select_out")) -> ChannelGroup:
    """The group whose producer (a member of ``kinds``) is ``node``."""
    for g in groups:
        if any(m.node == node and m.kind in kinds for m in g.members):
            return g
    raise UserError(f"no channel group is produced by '{node}'")


def groups_read_by(groups: list[ChannelGroup], node: str) -> list[ChannelGroup]:
    """The groups whose channels ``node`` reads (as input columns, select sources or a grouped conv)."""
    return [g for g in groups if any(m.node == node and m.kind in ("in", "select_in", "grouped", "diagonal")
                                     for m in g.members)]


def read_group(groups: list[ChannelGroup], node: str, width: int) -> tuple[ChannelGroup, Member] | None:
    """The group ``node`` reads as its whole input (``width`` channels, one group, no concatenation)
    and its member there; None when its input is several groups."""
    read = [(g, m) for g in groups for m in g.members if m.node == node and m.kind == "in"]
    if len(read) == 1 and read[0][1].offset == 0 and read[0][1].expand == 1 \
            and read[0][1].size * read[0][0].width == width:
        return read[0]
    return None


def sole_reader_group(groups: list[ChannelGroup], node: str, width: int | None = None) -> ChannelGroup | None:
    """The cuttable group that ``node`` alone reads (its whole input, units of one channel), so that
    cutting the group is cutting ``node``'s inputs; None for a shared stream or a concatenation.
    Grouped convs tied into the group (a depthwise conv before ``node``) do not count as readers."""
    if width is None:
        width = sum(m.size * g.width for g in groups for m in g.members if m.node == node and m.kind == "in")
    found = read_group(groups, node, width)
    if found is None:
        return None
    g, m = found
    others = [r for r in g.readers if r.node != node and r.kind not in ("grouped", "diagonal")]
    return g if g.cuttable and not others and m.size == 1 else None
