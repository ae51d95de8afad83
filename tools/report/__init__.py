"""Accuracy against mult-adds of finished runs, as the paper's Tables 4-7 and Figure 4 show it.

    python -m tools.report PATH [PATH ...] --out DIR [--title TEXT] [--paper]
                           [--paper-panel | --schedule] [--base-resolution 224]
                           [--unfinished NAME ...]

Each PATH is a workdir holding eval_results.json, or that file itself. Writes
DIR/results.md (one table per dataset, one row per model, then every run),
DIR/results.json (the same rows, machine-readable) and
DIR/accuracy_vs_mult_adds.png. Where runs carry the LiteRT figures that
`python -m tools.export --workdir=W --int8` merges into eval_results.json,
the tables gain fp32 and int8 latency and int8 top-1 columns, and
DIR/accuracy_vs_latency.png plots top-1 against the measured fp32 latency: where
the mult-adds proxy and the measurement disagree.

`--paper-panel` makes DIR/accuracy_vs_mult_adds.png two panels, as the paper's
Figures 4 and 5 show the trade-off: one point per model (the mean of its runs)
and, beside it, the paper's ImageNet points for the same models. `--schedule`
reads the runs as a study of training length and writes DIR/schedule.md,
DIR/schedule.json and DIR/schedule.png instead: top-1 against the number of
epochs each run was trained for (its config.json's train.num_epochs), and each
run's top-1 after every evaluation during training, from its metrics.jsonl.

A workdir without eval_results.json yet (a run still training) is skipped with
one warning line; the report fails only when no finished run remains.

Runs of one model (same dataset, variant, alpha and resolution) trained under
the same protocol (e.g. several seeds) are merged into one row: the mean, ±
half the range (max - min) / 2, so that mean ± spread covers every run; with
two seeds the sample standard deviation would be a poor estimate, the half range
is exact about what was seen. The protocol is every setting of the run's
config.json (beside its eval_results.json) that changes what it measures, all
but the seed and BOOKKEEPING_FIELDS, with the step and split it was evaluated
at: runs of one model under different protocols stay separate rows, each named
with the settings that tell it apart.

A module a job: load (runs and their settings), paper (the paper's rows), aggregate (rows of
one model and protocol), formatting and tables (results.md and .json), plots, schedule (the
study of training length), build (a whole report), command (its flags).
"""
