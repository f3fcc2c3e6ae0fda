"""The figures an experiment's report can draw: one registration per figure.

A registration says what the figure is drawn from and when a config can show it::

    register_figure("size", "diff_erank.figures:size_figure", frame="main")
    register_figure("stages", "diff_erank.figures:stages_figure", frame="stages", needs=has_stages)

- ``draw``: the function, or ``"module:function"`` to import it only when the report draws;
  it is called as ``draw(*frames, stem, prov)`` and writes ``stem``'s PNG, PDF and provenance
  (``figures.save``);
- ``frame``: the report frame(s) it takes, by name (:data:`FRAMES`; ``report.Frames``);
- ``needs``: ``needs(config) -> bool``, whether the config gives the figure something to show.

Everything else follows from the registry: a config may list the figure under ``figures``
(``config.validate``), the report rule declares its files (``outputs.figure_kinds``), and
``report.build`` draws it. Like lm-evaluation-harness's ``register_model``, registering is the
whole of adding one.

Stdlib only: the Snakefile imports it (through ``outputs``) on every job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from diff_erank.variants import TRAINED, init_scale, untrained_variants, variants

Config = dict[str, Any]

#: The report frames a figure can be drawn from (built by ``report.frames``):
#: ``main`` one row per model and dataset (algorithm (a), last layer, with ``acc_<task>`` columns);
#: ``last`` every algorithm at the last layer; ``main_all`` every algorithm and layer;
#: ``layers`` algorithm (a) per layer; ``algorithms_layers`` Diff-eRank by algorithm and layer;
#: ``stages`` each checkpoint against step 0; ``all`` every comparison as measured;
#: ``accuracy`` the accuracy records; ``tasks`` the accuracy tasks (a list);
#: ``init_scale`` the init-scale sweep's points.
FRAMES = ("main", "last", "main_all", "layers", "algorithms_layers", "stages", "all", "accuracy", "tasks",
          "init_scale")  # fmt: skip


@dataclass(frozen=True)
class Figure:
    """One registered figure: its name (the file stem under ``figures/``), how to draw it, from
    which frames, and when a config can show it."""

    name: str
    draw: Callable[..., None] | str
    frames: tuple[str, ...]
    needs: Callable[[Config], bool]

    def drawer(self) -> Callable[..., None]:
        """The drawing function, imported now where it was registered as ``"module:function"``."""
        if callable(self.draw):
            return self.draw
        module, _, name = self.draw.partition(":")
        return getattr(import_module(module), name)


#: Every registered figure by name, in registration order (the order of the report's files).
FIGURES: dict[str, Figure] = {}


def always(config: Config) -> bool:
    return True


def register_figure(
    name: str,
    draw: Callable[..., None] | str | None = None,
    *,
    frame: str | tuple[str, ...],
    needs: Callable[[Config], bool] = always,
):
    """Register a figure; without ``draw``, a decorator for the drawing function."""
    if draw is None:

        def decorator(fn: Callable[..., None]) -> Callable[..., None]:
            register_figure(name, fn, frame=frame, needs=needs)
            return fn

        return decorator
    frames = (frame,) if isinstance(frame, str) else tuple(frame)
    unknown = [f for f in frames if f not in FRAMES]
    if unknown:
        raise ValueError(f"figure {name!r}: unknown frame(s) {unknown}; valid: {list(FRAMES)}")
    if name in FIGURES or name == "multimodal":  # multimodal: the multi-modal report's own figure
        raise ValueError(f"a figure named {name!r} is already registered")
    FIGURES[name] = Figure(name, draw, frames, needs)
    return FIGURES[name]


def figure_names() -> list[str]:
    """The names a config's ``figures`` may list."""
    return list(FIGURES)


# -- when a config can show a figure -------------------------------------------------------------


def has_stages(config: Config) -> bool:
    """Whether some model has a checkpoint or further-trained stage besides trained and M0."""
    return any(set(variants(m)) - {TRAINED, *untrained_variants(m)} for m in config["models"].values())


def sweeps_init_scale(config: Config) -> bool:
    """Whether some model entry sets the init scale of its M0 (a point of an init-scale sweep)."""
    return any(init_scale(m) is not None for m in config["models"].values())


def both_algorithms(config: Config) -> bool:
    return len(set(config["algorithms"])) > 1


def has_accuracy(config: Config) -> bool:
    return bool(config.get("accuracy"))


def several_layers(config: Config) -> bool:
    """More than one layer, or ``all`` of them."""
    layers = config["layers"] if isinstance(config["layers"], list) else [config["layers"]]
    return len(layers) > 1 or "all" in layers


# -- the figures of the paper (drawn by diff_erank.figures) --------------------------------------

register_figure("size", "diff_erank.figures:size_figure", frame="main")
register_figure("stages", "diff_erank.figures:stages_figure", frame="stages", needs=has_stages)
register_figure("algorithms", "diff_erank.figures:algorithms_figure", frame="last", needs=both_algorithms)
register_figure("accuracy", "diff_erank.figures:accuracy_figure", frame=("main", "tasks"), needs=has_accuracy)
register_figure("layers", "diff_erank.figures:layers_figure", frame="layers", needs=several_layers)
register_figure("init_scale", "diff_erank.figures:init_scale_figure", frame="init_scale",
                needs=sweeps_init_scale)  # fmt: skip
