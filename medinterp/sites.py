"""The one site vocabulary: short site names → TransformerLens hook names, layouts and head axes.

A *site* is a kind of activation that exists once per block. The residual-stream-shaped sites
(``[batch, pos, d_model]``) are what :mod:`medinterp.activations` collects and what
:mod:`medinterp.hooks` ablates; the head sites (``[batch, pos, head, d_head]``, the attention
pattern ``[batch, head, query, key]``) are what activation patching sweeps per head.

=============  ================================  ======  ==========
short name     hook (``blocks.{l}.`` + ...)      heads   layout
=============  ================================  ======  ==========
resid_pre      hook_resid_pre                    no      resid
resid_mid      hook_resid_mid                    no      resid
resid_post     hook_resid_post                   no      resid
attn_out       hook_attn_out                     no      resid
mlp_out        hook_mlp_out                      no      resid
z              attn.hook_z                       yes     head
q, k, v        attn.hook_q / hook_k / hook_v     yes     head
pattern        attn.hook_pattern                 yes     pattern
=============  ================================  ======  ==========

Aliases: ``head``, ``head_out``, ``head_z``, ``attn_head_out`` → ``z``; ``resid`` → ``resid_pre``;
``attn`` → ``attn_out``; ``mlp`` → ``mlp_out`` (the sub-layer names :mod:`medinterp.hooks` uses).

Example:
    >>> hook_name("z", 3)
    'blocks.3.attn.hook_z'
    >>> canonical("head_out"), has_heads("resid_pre"), has_heads("pattern")
    ('z', False, True)
"""

from __future__ import annotations

from typing import NamedTuple

from medinterp.errors import MedinterpError

__all__ = ["Site", "SITES", "ALIASES", "RESID_SITES", "HEAD_SITES", "canonical", "hook_name", "has_heads",
           "layout", "require_heads"]


class Site(NamedTuple):
    """One site: the hook suffix after ``blocks.{layer}.``, whether it has a head axis, its layout.

    ``layout`` is ``"resid"`` ``[batch, pos, d]``, ``"head"`` ``[batch, pos, head, d]`` or
    ``"pattern"`` ``[batch, head, query_pos, key_pos]``.
    """

    hook: str
    has_heads: bool
    layout: str


SITES: dict[str, Site] = {
    "resid_pre": Site("hook_resid_pre", False, "resid"),
    "resid_mid": Site("hook_resid_mid", False, "resid"),
    "resid_post": Site("hook_resid_post", False, "resid"),
    "attn_out": Site("hook_attn_out", False, "resid"),
    "mlp_out": Site("hook_mlp_out", False, "resid"),
    "z": Site("attn.hook_z", True, "head"),
    "q": Site("attn.hook_q", True, "head"),
    "k": Site("attn.hook_k", True, "head"),
    "v": Site("attn.hook_v", True, "head"),
    "pattern": Site("attn.hook_pattern", True, "pattern"),
}
ALIASES: dict[str, str] = {"head_out": "z", "head": "z", "attn_head_out": "z", "head_z": "z", "resid": "resid_pre",
                           "attn": "attn_out", "mlp": "mlp_out"}
#: Sites shaped like the residual stream, ``[batch, pos, d_model]``.
RESID_SITES: tuple[str, ...] = tuple(s for s, v in SITES.items() if v.layout == "resid")
#: Sites with a head axis.
HEAD_SITES: tuple[str, ...] = tuple(s for s, v in SITES.items() if v.has_heads)


def canonical(site: str, allowed: tuple[str, ...] | None = None, *, what: str = "site") -> str:
    """The short name of ``site`` (aliases resolved); a clear error for an unknown or disallowed one."""
    s = ALIASES.get(site, site) if isinstance(site, str) else site
    ok = tuple(SITES) if allowed is None else allowed
    if s not in ok:
        names = list(ok) + [a for a, t in ALIASES.items() if t in ok]
        raise MedinterpError(f"unknown {what} {site!r}; expected one of {', '.join(names)}")
    return s


def hook_name(site: str, layer: int) -> str:
    """Full TransformerLens hook name of a site at a block, e.g. ``blocks.2.hook_mlp_out``."""
    return f"blocks.{int(layer)}.{SITES[canonical(site)].hook}"


def has_heads(site: str) -> bool:
    """Whether the site has a head axis (``z``, ``q``, ``k``, ``v``, ``pattern``)."""
    return SITES[canonical(site)].has_heads


def layout(site: str) -> str:
    """``"resid"``, ``"head"`` or ``"pattern"`` (see :class:`Site`)."""
    return SITES[canonical(site)].layout


def require_heads(site: str, heads: object, *, option: str = "heads=") -> None:
    """Raise when heads are given for a site without a head axis (instead of silently ignoring them)."""
    if heads is not None and not has_heads(site):
        raise MedinterpError(f"{option} was given but site {canonical(site)!r} has no heads; heads apply only to "
                             f"{', '.join(HEAD_SITES)} (omit {option} or choose a head site)")
