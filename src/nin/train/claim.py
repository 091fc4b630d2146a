"""A run's place and its settings before it starts: the run folder claimed by one process (and learnt by
the others), and the config a resumed run continues with."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from .. import checkpoint as ckpt
from ..config import TrainConfig, from_dict, without_retired_fields
from ..distributed import World, broadcast_from_main
from ..errors import NinError
from ..rundir import RunFolder

RESUME_OVERRIDES = ("epochs", "device", "progress")


def claim_run_folder(config: TrainConfig, resume: str | None, world: World) -> RunFolder:
    """Rank 0 claims (creates, locks, checks) the run folder; every process learns its path, or the same
    error. The other ranks get it unclaimed: they write nothing."""
    folder, outcome = None, None
    if world.is_main:
        try:
            folder = RunFolder.claim(config.out, config.recipe or config.dataset, resume)
            outcome = ("ok", str(folder.path))
        except NinError as error:
            outcome = ("error", str(error))
    kind, value = broadcast_from_main(outcome)
    if kind == "error":
        raise NinError(value)
    return folder or RunFolder(Path(value))


def resume_config(run: str, overrides: dict) -> TrainConfig:
    """The config a run was started with; only ``epochs``, ``device`` and ``progress`` may change."""
    saved = ckpt.load_checkpoint(run)
    config = from_dict(without_retired_fields(saved["config"]), source="checkpoint config")
    refused = sorted(set(overrides) - set(RESUME_OVERRIDES))
    if refused:
        raise NinError(f"--resume continues a run with its own settings; only --epochs, --device and "
                       f"--progress may change, not --{refused[0].replace('_', '-')}")
    if overrides.get("epochs", saved["epoch"]) < saved["epoch"]:
        raise NinError(f"{run} has trained {saved['epoch']} epochs already: --epochs must be {saved['epoch']} "
                       f"or more, got {overrides['epochs']}")
    return dataclasses.replace(config, **overrides)
