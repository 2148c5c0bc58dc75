"""Helpers shared by the dashboard's pages (each page lives in the app whose data it shows).

A page is a template made of fragments; ``render_page`` renders the whole page, or with
``?fragment=NAME`` only that fragment, which is what ``static/aitbc/live.js`` fetches to
refresh part of a page when a live event arrives.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

Builder = Callable[[], Mapping[str, Any]]


@dataclass(frozen=True)
class Fragment:
    template: str
    build: Builder


def render_page(
    request: HttpRequest,
    template: str,
    fragments: Mapping[str, Fragment],
    context: Mapping[str, Any] | None = None,
) -> HttpResponse:
    name = request.GET.get("fragment")
    base = dict(context or {})
    if name:
        fragment = fragments.get(name)
        if fragment is None:
            raise Http404(f"no fragment {name!r}")
        return render(request, fragment.template, base | dict(fragment.build()))
    for fragment in fragments.values():
        base.update(fragment.build())
    return render(request, template, base)


@dataclass(frozen=True)
class Chart:
    """A small line chart drawn as inline SVG by the template (no JavaScript)."""

    points: str
    area: str
    max_label: str
    last_label: str
    width: int
    height: int
    empty: bool


def line_chart(values: list[float | None], *, width: int = 600, height: int = 120, unit: str = "") -> Chart:
    """SVG ``points`` for ``values`` (None: no data there) scaled into ``width`` x ``height``."""
    known = [v for v in values if v is not None]
    top = max(known) if known else 0
    scale = (height - 14) / top if top > 0 else 0
    step = width / max(1, len(values) - 1)
    coords = []
    for index, value in enumerate(values):
        y = height - 2 - (value or 0) * scale
        coords.append(f"{index * step:.1f},{y:.1f}")
    points = " ".join(coords)
    area = f"0,{height} {points} {width},{height}" if coords else ""
    last = next((v for v in reversed(values) if v is not None), None)
    return Chart(
        points=points,
        area=area,
        max_label=f"{_fmt(top)}{unit}",
        last_label=f"{_fmt(last)}{unit}" if last is not None else "—",
        width=width,
        height=height,
        empty=not known,
    )


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}".rstrip("0").rstrip(".")
