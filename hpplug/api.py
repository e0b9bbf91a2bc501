"""``hpplug.train``: the engine from a notebook or a script, on your own objects.

    import hpplug
    result = hpplug.train(model=net, train=train_ds, test=test_ds, plugins=["cosine", "dropout"], epochs=5)
    result.summary["test/accuracy"], result.record_dir

The run is the one ``hpplug run`` would make: the same engine, plugins, W&B tracking and
run record; only the model and data come from the caller instead of a plugin name.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from torch import nn
from torch.utils.data import Dataset


def train(*, model: nn.Module | Callable[..., nn.Module] | str = "mlp",
          train: Dataset | None = None, test: Dataset | None = None, val: Dataset | None = None,
          dataset: str = "digits", plugins: Sequence[str] = (), params: dict[str, dict[str, Any]] | None = None,
          show_progress: bool = False, **options: Any) -> Any:
    """Train one run and return its :class:`~hpplug.engine.RunResult` (``status``,
    ``summary``, ``record_dir``, ``run_id``).

    ``model``: an ``nn.Module`` (trained in place), a callable taking ``num_classes`` and/or
    ``input_shape`` (what ``--model MODULE:ATTR`` takes), or a model plugin's name.
    ``train``/``test``/``val``: map-style data sets of ``(input, label)``; without ``train``,
    ``dataset`` names a data-set plugin. ``plugins`` and ``params`` (``{"cosine":
    {"t_max": 10}}``) as on the command line; ``options`` are ``hpplug run``'s options with
    underscores (``epochs=5``, ``lr=0.05``, ``wandb_mode="disabled"``). Bad values raise
    :class:`hpplug.HpplugError` with the command line's message.
    """
    from hpplug import discovery, engine, selection
    from hpplug.components import Splits
    from hpplug.run_args import build_config

    catalog = discovery.discover()
    local: dict[str, type] = {}
    if not isinstance(model, str):
        model_name = f"python:{type(model).__name__ if isinstance(model, nn.Module) else getattr(model, '__name__', 'model')}"
        local[model_name] = selection.model_class(model_name, model)
        model = model_name
    if train is not None:
        dataset = f"python:{type(train).__name__}"
        splits = Splits(train=train, test=test, val=val)
        local[dataset] = selection.dataset_class(dataset, lambda: splits)
    for name, cls in local.items():
        catalog[name] = discovery.PluginEntry(name, "<python>", "", name, cls=cls)
    config, entries = build_config(catalog, list(plugins), dict(params or {}),
                                   {**options, "model": model, "dataset": dataset})
    return engine.run(config, entries, show_progress=show_progress)
