"""TorchScript traces that are used only where they reproduce the eager module bit for bit.

At one short text at a time, a Hugging Face encoder spends a large share of its time in Python
(module calls, signature checks, mask plumbing). ``torch.jit.trace`` records the same tensor ops
once and replays them without that overhead. A trace can silently bake in a Python branch taken
for the example input, so :func:`exact_trace` replays the trace on check inputs of other shapes
(twice, because the TorchScript executor re-optimizes a graph after its first calls) and keeps it
only if every output is identical to the eager module's. Callers fall back to eager otherwise.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger("routenlp.models.tracing")

# Texts to trace and check an encoder on: two lengths, and both as one padded batch.
CHECK_TEXTS = ("Where is my card?", "The Licensee shall not assign this Agreement without the prior written consent "
                                    "of the Licensor, which shall not be unreasonably withheld.")


def exact_trace(module: Any, example: tuple[Any, ...], checks: Sequence[tuple[Any, ...]], name: str) -> Any | None:
    """``module`` traced on ``example``, or None if tracing fails or the trace differs from it on any of ``checks``.

    ``module`` takes positional tensors and returns one tensor. Nothing here changes what the module computes.
    """
    import torch

    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about Python values: the check below decides
            traced = torch.jit.trace(module, example, check_trace=False, strict=False)
            same = all(torch.equal(traced(*inputs), module(*inputs)) for inputs in list(checks) * 2)
    except Exception as exc:  # noqa: BLE001 - any tracing failure leaves the caller eager, never broken
        logger.warning("%s stays eager: tracing failed (%s)", name, exc)
        return None
    if not same:
        logger.warning("%s stays eager: its trace does not reproduce the eager outputs", name)
        return None
    return traced
