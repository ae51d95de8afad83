"""Exports a trained run to LiteRT (TensorFlow Lite) and measures it with the mobile runtime.

    python -m tools.export --workdir=W [--int8] [--threads N] [--data_folder DIR]
    python -m tools.export --latency-table --out results/latency [--resolutions 224,128]

The first form restores the latest checkpoint of W (its EMA weights and BatchNorm statistics,
with the model config saved in the checkpoint), writes W/export/model_fp32.tflite (and with
--int8 a full-integer model_int8.tflite, calibrated on training images), checks the fp32 graph
against the Flax forward pass on validation images, measures batch-1 latency with the LiteRT
interpreter and its XNNPACK delegate, evaluates the int8 model on the whole evaluation split,
and merges the figures into W/eval_results.json (every key already there is kept).

The second form measures untrained copies of every model of the paper's Tables 4 to 7, fp32 and
int8, in alternating rounds of one process, and writes latency.json and latency.md.

The model is rebuilt with the library convolutions (grouped depthwise, lax 1x1 and 3x3): this
project's CPU training implementations compute the same function, but export as hundreds of
MUL/ADD/SLICE ops that XNNPACK splits into several partitions, which the graph check refuses.

A module a job: conversion (the flatbuffer and its graph check), timing (the interpreter and
latency), trained_run (the first form), latency_table (the second), __main__ (the flags).
"""
from mobilenet import errors


class ExportError(errors.UserError, ValueError):
  """An export that cannot serve: a graph the mobile runtime would not run as one XNNPACK
  partition of builtin ops, or an export that left its figures out of eval_results.json."""
