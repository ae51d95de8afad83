"""Training-step and inference images/s of a config on this device, optionally against PyTorch.

  python -m tools.benchmark --config=configs/dws.py [--batch 32] [--resolution 128]
      [--steps N] [--ops] [--torch] [--json] [--variants=dws,conv] [--lanes N]
      [--standard_impls=conv,matmul_grad]

The training step timed is the one train.py runs: `steps.build(config, mesh).train`, with the
state, optimizer and schedule built by the same function as the trainer's (loss with the
config's label smoothing, weight decay, EMA, the finite-state check), on one batch kept on the
device. The PyTorch twin uses the same optimizer (SGD, Nesterov momentum, L2
weight decay on the same kernels) and loss. Compile time is reported apart and the timed steps
follow a warm-up. Other jobs on a shared machine skew absolute numbers, so JAX and PyTorch
(and the variants) are timed in alternating rounds and compared by their medians: ratios from
one run are the figures to trust. Like train.py, it runs under tcmalloc where installed
(mobilenet.allocator; MOBILENET_ALLOCATOR=system for glibc's malloc).

`--standard_impls` times the whole training step once more per listed `model.standard_impl`,
in the same alternating rounds: which of the two is faster depends on the CPU and the layer
shapes, and the single-op rows of `--ops` do not settle it for a whole model.

`--lanes N` asks what `sweep --lanes N` buys: it runs this benchmark once on every core, then
N copies at once, each pinned to its share of the cores (tools.lanes), and compares their
training images/s in all with the single run's.

A module a job: models (what is timed), measure (the alternating rounds), op_timings (`--ops`),
timing (the clock), lanes_comparison (`--lanes`), text (the report), __main__ (the flags).
"""
