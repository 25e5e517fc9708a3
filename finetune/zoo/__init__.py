"""The reference zoo: small pixel-space T2I models built on first use and cached in ``$MANDC_HOME/zoo``.

``zoo:NAME`` model references resolve here. Importing this package is cheap (no diffusers); building
imports the heavy libraries.
"""
from finetune.zoo.builder import (build, get_spec, is_built, load_card, mandc_home, spec_parameters, zoo_home,
                                  zoo_path)
from finetune.zoo.specs import ZOO, ZOO_SPECS, ZooSpec


def list_zoo() -> list[ZooSpec]:
    """Every zoo model's spec, in table order."""
    return list(ZOO_SPECS)


__all__ = ["ZOO", "ZooSpec", "build", "get_spec", "is_built", "list_zoo", "load_card", "mandc_home",
           "spec_parameters", "zoo_home", "zoo_path"]
