"""The evaluation stages, in the order they run: {name: stage class}.

Each stage is one file here: a frozen dataclass of its settings with `run(context)`. The accuracy stage
runs first because the latent attack of `ae_attacks` reports the accuracy of its probes. A new stage is
one class added to `STAGES`; its settings become `python -m evaluate.robustness` flags by themselves.
"""

import dataclasses

from evaluate.stage_base import Common, EvaluationError
from evaluate.stages.accuracy import Accuracy
from evaluate.stages.ae_attacks import AutoencoderAttacks
from evaluate.stages.chains import Chains
from evaluate.stages.decoder import Decoder
from evaluate.stages.margin import Margin

STAGES = {stage.name: stage for stage in (Accuracy, Decoder, AutoencoderAttacks, Margin, Chains)}


def setting_owners():
    """{setting name: the class that owns it (Common or a stage)}; every name belongs to exactly one."""
    owners = {}
    for owner in (Common, *STAGES.values()):
        for field in dataclasses.fields(owner):
            if field.name in owners:
                raise TypeError(
                    f"setting {field.name!r} is declared by both {owners[field.name].__name__} and "
                    f"{owner.__name__}; settings are flat flags, so names must be unique"
                )
            owners[field.name] = owner
    return owners


def build(names, **values):
    """Configured stages from stage names and flat settings {name: value} (settings of other stages ignored)."""
    unknown = [name for name in names if name not in STAGES]
    if unknown:
        raise EvaluationError(f"unknown stage(s) {', '.join(unknown)}; choose one of: {', '.join(STAGES)}")
    if len(set(names)) != len(names):
        raise EvaluationError(f"a stage is named twice in {', '.join(names)}")
    stages = []
    for name in names:
        fields = {f.name for f in dataclasses.fields(STAGES[name])}
        stages.append(STAGES[name](**{key: value for key, value in values.items() if key in fields}))
    return stages
