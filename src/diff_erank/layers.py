"""Hidden-state layers: the names a config may give, and which of ``hidden_states`` each one is.

A model with L blocks returns L + 1 hidden states:

    embeddings   hidden_states[0], the embedding output (before any block)
    first        hidden_states[1], the first block's output
    middle       hidden_states[L // 2] (at least 1)
    last         hidden_states[L]; for OPT and GPTNeoX after the final layer norm, equal to
                 ``AutoModel(...).last_hidden_state``
    all          every index 0..L, each named by its index ("0" .. "L"), as an integer layer is

An integer is an index into ``hidden_states``; a negative one counts from the end (-1 = last).

Stdlib only, below ``config``: the Snakefile imports it.
"""

from __future__ import annotations

from collections.abc import Sequence

from diff_erank.errors import ConfigError

NAMES = ("embeddings", "first", "middle", "last", "all")
#: Every layer of the model (``hidden_states`` 0..L): one row each.
ALL = "all"
#: The paper's layer (its Fig. 1 and every table but Table 4).
LAST = "last"
#: Depth order of the named layers (``all`` has none: it is every index).
DEPTH = {"embeddings": 0, "first": 1, "middle": 2, "last": 3}
#: What each reading of the paper's "first layer" (Table 4) is.
FIRST_LAYER_READINGS = {
    "embeddings": "hidden_states[0], the embedding output",
    "first": "hidden_states[1], the first block's output",
}


def check_layers(layers: Sequence[str | int]) -> None:
    """Raise unless every entry of a config's ``layers`` is a layer name or an integer."""
    for layer in layers:
        if isinstance(layer, str) and layer not in NAMES:
            raise ConfigError(f"layers: {layer!r} is not a layer; use {list(NAMES)} or an integer")


def _named(num_layers: int) -> dict[str, int]:
    return {"embeddings": 0, "first": 1, "middle": max(1, num_layers // 2), "last": num_layers}


def layer_indices(layers: Sequence[str | int], num_layers: int) -> dict[str, int]:
    """Map layer names to indices into ``hidden_states`` (0 = embeddings, L = last block);
    ``all`` expands to every index 0..L. An unknown name or an index out of range is an error."""
    named = _named(num_layers)
    out: dict[str, int] = {}
    for layer in layers:
        if layer == ALL:
            out.update({str(i): i for i in range(num_layers + 1)})
        elif isinstance(layer, str):
            if layer not in named:
                raise ConfigError(f"layer {layer!r}; valid: {list(NAMES)} or an integer")
            out[layer] = named[layer]
        else:
            idx = layer if layer >= 0 else num_layers + 1 + layer
            if not 0 <= idx <= num_layers:
                raise ConfigError(f"layer {layer} out of range for a model with {num_layers} layers")
            out[str(layer)] = idx
    return out


def n_distinct(layers: Sequence[str | int], num_layers: int) -> int:
    """How many distinct hidden states ``layers`` name (at least 1), for sizing a dump.

    ``num_layers`` may be an estimate, so an integer beyond it is counted, not refused; an unknown
    name is refused, as the dump would refuse it.
    """
    named = _named(num_layers)
    idx: set[int] = set()
    for layer in layers:
        if layer == ALL:
            idx |= set(range(num_layers + 1))
        elif isinstance(layer, str):
            if layer not in named:
                raise ConfigError(f"layer {layer!r}; valid: {list(NAMES)} or an integer")
            idx.add(named[layer])
        else:
            idx.add(layer if layer >= 0 else num_layers + 1 + layer)
    return max(1, len(idx))
