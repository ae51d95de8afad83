"""The XLA:CPU compiler options the model's programs are compiled with.

jaxlib 0.10's XLA:CPU hands convolutions to YNNPACK by default, as it does matrix products and
reductions, and YNNPACK's convolution is slow to differentiate: a full 3x3 convolution's forward
and backward pass, and Conv MobileNet's whole training step, run faster with XLA's own
(docs/cpu_speed.md; `tools.benchmark --ynn_convolutions` times both). These options keep
YNNPACK's matrix products and reductions, which are faster than XLA's, and take convolutions back.
They change how a program runs, not what it computes.

`memory_scheduler=True` also orders the program for the least memory instead of for concurrency:
smaller temporaries, slower steps (docs/cpu_speed.md; `tools.benchmark --memory_scheduler`).
"""
import os

import jax
import jaxlib.version

_FUSION_TYPES = "xla_cpu_experimental_ynn_fusion_type"
_DOTS_AND_REDUCTIONS = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
# jaxlib 0.10's default, spelled out so that a comparison can compile with it explicitly.
_WITH_CONVOLUTIONS = _DOTS_AND_REDUCTIONS + ",LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"
_SCHEDULER = "xla_cpu_scheduler_type"
_MEMORY_OPTIMIZED = "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"
# The option is experimental: it is set only on the jaxlib it was measured with, where XLA
# knows it; any other jaxlib compiles with its own defaults.
MEASURED_JAXLIB = "0.10."


def compiler_options(ynn_convolutions: bool = False,
                     memory_scheduler: bool = False) -> dict[str, str]:
  """Options for `jax.jit(..., compiler_options=...)` or `Lowered.compile`: none off CPU or on
  another jaxlib; YNNPACK's share unless XLA_FLAGS sets it (the user's choice).
  `ynn_convolutions=True` spells out jaxlib's default, for comparison."""
  if (jax.default_backend() != "cpu"
      or not jaxlib.version.__version__.startswith(MEASURED_JAXLIB)):
    return {}
  options = {}
  if _FUSION_TYPES not in os.environ.get("XLA_FLAGS", ""):
    options[_FUSION_TYPES] = _WITH_CONVOLUTIONS if ynn_convolutions else _DOTS_AND_REDUCTIONS
  if memory_scheduler:
    options[_SCHEDULER] = _MEMORY_OPTIMIZED
  return options
