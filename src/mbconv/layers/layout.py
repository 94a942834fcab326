"""Each block type's layout, defined once: the ordered, named steps of its residual branch.

A layout is a tuple of `Step`s in forward order. The block modules (`mbconv.layers.blocks`) create one submodule per
step and run them in this order; the inference module, the analytic cost, the quantization noise model, pruning
and the weight key maps walk the same steps. So a new block type, or a new place for the SE, is one edit here.

Block types (the block-string prefixes of `mbconv.spec`):
- `ir`  MBConv (inverted residual): [1x1 expand] -> k x k depthwise -> [SE] -> 1x1 project (linear)
- `ds`  depthwise-separable: an `ir` without the expansion conv (TF's MBConv1)
- `er`  Fused-MBConv: k x k expand -> [SE] -> 1x1 project
- `cn`  a plain k x k conv block
`se_position='before_dw'` moves the SE in front of the spatial conv: the depthwise conv of `ir`/`ds`, the fused
k x k expansion conv of `er` (there it gates the block input).
"""

from __future__ import annotations

from dataclasses import dataclass

BLOCK_TYPES = ("ir", "ds", "er", "cn")
SE_POSITIONS = ("after_dw", "before_dw")
# Submodules are created in this order whatever the forward order is, so parameter order, state-dict order and
# the random draws of weight init do not depend on where the SE sits.
CREATION_ORDER = ("conv", "expand", "depthwise", "se", "project")


@dataclass(frozen=True)
class Step:
    """One named step of a block: a conv -> BN -> act (`kind='conv'`) or a squeeze-excite gate (`kind='se'`).

    Conv steps: `in_chs` -> `out_chs`, `kernel`, `stride`, `groups`, `act` after BN (None: linear). SE steps gate
    `in_chs` (= `out_chs`) channels through a squeeze of `rd_chs` with activation `act` and gate `gate`; `gates`
    says which channels those are ('mid' or 'in', see `se_site`).
    """

    name: str
    kind: str
    in_chs: int
    out_chs: int
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    act: str | None = None
    rd_chs: int = 0
    gate: str = "sigmoid"
    gates: str = ""  # se: 'mid' (the expanded channels) or 'in' (the block input)

    @property
    def is_depthwise(self) -> bool:
        return self.kind == "conv" and self.groups == self.in_chs == self.out_chs and self.groups > 1


def check_se_position(se_position: str) -> None:
    if se_position not in SE_POSITIONS:
        raise ValueError(f"invalid se_position={se_position!r}: expected 'after_dw' or 'before_dw'")


def se_site(block: str, se_position: str) -> str:
    """Which channels a block's SE gates: 'mid' (the expanded ones), except a Fused-MBConv's SE before its k x k
    expansion conv, which gates the block input ('in')."""
    check_se_position(se_position)
    return "in" if block == "er" and se_position == "before_dw" else "mid"


def se_channels(block: str, in_chs: int, mid_chs: int, se_position: str) -> int:
    """The number of channels a block's SE gates (see `se_site`)."""
    return in_chs if se_site(block, se_position) == "in" else mid_chs


def se_step(layout: tuple[Step, ...]) -> Step | None:
    """The SE step of a layout (None: no SE)."""
    return next((s for s in layout if s.kind == "se"), None)


def block_layout(
    block: str,
    in_chs: int,
    out_chs: int,
    mid_chs: int | None = None,
    kernel: int = 3,
    stride: int = 1,
    act: str | None = "swish",
    expand: bool = True,
    se_chs: int = 0,
    se_act: str | None = None,
    se_gate: str = "sigmoid",
    se_position: str = "after_dw",
    project_act: str | None = None,
) -> tuple[Step, ...]:
    """The steps of one block, in forward order (see the module docstring). `mid_chs` defaults to `in_chs`;
    `expand` is ignored for `er` (always expands) and `cn`/`ds` (never do); `se_chs` 0 means no SE; `se_act`
    defaults to `act`."""
    if block not in BLOCK_TYPES:
        raise ValueError(f"invalid block type {block!r}: expected one of {BLOCK_TYPES}")
    check_se_position(se_position)
    if block == "cn":
        return (Step("conv", "conv", in_chs, out_chs, kernel, stride, 1, act),)
    mid = in_chs if mid_chs is None else mid_chs
    has_expand = block == "er" or (block == "ir" and expand)
    if not has_expand and mid != in_chs:
        raise ValueError(f"invalid mid_chs={mid}: without an expansion conv it must equal in_chs={in_chs}")
    se: tuple[Step, ...] = ()
    if se_chs:
        on = se_channels(block, in_chs, mid, se_position)
        se = (Step("se", "se", on, on, act=se_act or act, rd_chs=se_chs, gate=se_gate,
                   gates=se_site(block, se_position)),)
    before, after = (se, ()) if se_position == "before_dw" else ((), se)
    project = (Step("project", "conv", mid, out_chs, 1, 1, 1, project_act),)
    if block == "er":
        return before + (Step("expand", "conv", in_chs, mid, kernel, stride, 1, act),) + after + project
    expansion = (Step("expand", "conv", in_chs, mid, 1, 1, 1, act),) if has_expand else ()
    depthwise = (Step("depthwise", "conv", mid, mid, kernel, stride, mid, act),)
    return expansion + before + depthwise + after + project


def step_names(layout: tuple[Step, ...]) -> tuple[str, ...]:
    """The submodule names of a layout, in forward order."""
    return tuple(s.name for s in layout)
