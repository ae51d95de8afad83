"""A Flax model as a LiteRT flatbuffer (jax2tf and TFLiteConverter, builtin ops only), and the
check that refuses a graph XNNPACK would not run as one partition."""
import collections
from typing import Callable, Iterable, Optional

import numpy as np

from mobilenet import model
from tools.export import ExportError


# The convolutions that LiteRT has builtin kernels for: each layer becomes one CONV_2D or
# DEPTHWISE_CONV_2D op, and BatchNorm folds into it.
EXPORT_IMPLS = dict(depthwise_impl="grouped", pointwise_impl="conv", standard_impl="conv")
DELEGATE_OP_NAME = "DELEGATE"  # what the interpreter calls a node that a delegate took over
CUSTOM_OPCODE = 32  # BuiltinOperator.CUSTOM in the TFLite schema: Flex and custom ops


def inference_fn(net: model.MobileNet, variables) -> Callable:
  """images -> logits in inference mode (BatchNorm uses its statistics and folds; no dropout)."""
  return lambda images: net.apply(variables, images, train=False)


def _tf_function(fn: Callable, resolution: int):
  """The JAX function as a TensorFlow function of one static batch-1 input; the weights are
  closed over, so they become constants of the graph."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from jax.experimental import jax2tf  # pylint: disable=import-outside-toplevel
  converted = jax2tf.convert(fn, with_gradient=False, native_serialization_platforms=("cpu",))
  return tf.function(converted, autograph=False,
                     input_signature=[tf.TensorSpec((1, resolution, resolution, 3), tf.float32)])


def convert(fn: Callable, resolution: int, *,
            calibration_images: Optional[Callable[[], Iterable[np.ndarray]]] = None) -> bytes:
  """A .tflite flatbuffer of fn; with calibration_images, full-integer int8 (int8 input and
  output too), its activation ranges measured on those images (each [1, R, R, 3] float32)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  function = _tf_function(fn, resolution)
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [function.get_concrete_function()], function)
  if calibration_images is None:
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  else:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image] for image in calibration_images())
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
  return converter.convert()


def operator_counts(model_bytes: bytes) -> collections.Counter:
  """Op name -> count over every subgraph, read from the flatbuffer's operator codes; a custom
  or Flex op is named by its custom code (e.g. "FlexErfinv")."""
  from ai_edge_litert import schema_py_generated as schema  # pylint: disable=import-outside-toplevel
  names = {code: name for name, code in vars(schema.BuiltinOperator).items()
           if not name.startswith("_")}
  flatbuffer = schema.Model.GetRootAsModel(model_bytes, 0)
  opcode_names = []
  for index in range(flatbuffer.OperatorCodesLength()):
    opcode = flatbuffer.OperatorCodes(index)
    # Codes below 127 live in the deprecated int8 field; the newer field holds all of them.
    code = max(opcode.BuiltinCode(), opcode.DeprecatedBuiltinCode())
    if code == CUSTOM_OPCODE:
      custom = opcode.CustomCode()
      opcode_names.append("custom:" + (custom.decode() if custom else "?"))
    else:
      opcode_names.append(names.get(code, f"builtin:{code}"))
  counts = collections.Counter()
  for subgraph_index in range(flatbuffer.SubgraphsLength()):
    subgraph = flatbuffer.Subgraphs(subgraph_index)
    for op_index in range(subgraph.OperatorsLength()):
      counts[opcode_names[subgraph.Operators(op_index).OpcodeIndex()]] += 1
  return counts


def interpreter(model_bytes: bytes, num_threads: int = 1):
  """The LiteRT interpreter with its default XNNPACK delegate, tensors allocated."""
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
  runtime = Interpreter(model_content=model_bytes, num_threads=num_threads)
  runtime.allocate_tensors()
  return runtime


def check_graph(model_bytes: bytes, name: str) -> dict:
  """Raises ExportError (one line, naming the model) unless every op is a builtin and XNNPACK
  takes the whole graph as one partition; returns what it saw.

  Non-builtin ops are read from the flatbuffer before any interpreter exists (one without the
  Flex delegate could not even load them). Partitions are the interpreter's DELEGATE nodes;
  one partition covers the whole graph when it reads the model's input and writes its output.
  """
  counts = operator_counts(model_bytes)
  custom = sorted(op for op in counts if op.startswith("custom:"))
  if custom:
    raise ExportError(f"{name}: {sum(counts[op] for op in custom)} non-builtin op(s) "
                      f"({', '.join(op.removeprefix('custom:') for op in custom)}); the mobile "
                      "runtime needs TFLITE_BUILTINS only")
  runtime = interpreter(model_bytes)
  nodes = runtime._get_ops_details()  # pylint: disable=protected-access  (the only view of nodes)
  partitions = [node for node in nodes if node["op_name"] == DELEGATE_OP_NAME]
  model_inputs = {detail["index"] for detail in runtime.get_input_details()}
  model_outputs = {detail["index"] for detail in runtime.get_output_details()}
  whole = (len(partitions) == 1 and model_inputs <= set(partitions[0]["inputs"])
           and model_outputs == set(partitions[0]["outputs"]))
  if not whole:
    summary = ", ".join(f"{count} {op}" for op, count in counts.most_common(4))
    raise ExportError(
        f"{name}: XNNPACK runs it as {len(partitions)} delegate partitions, not one over the "
        f"whole graph ({sum(counts.values())} ops: {summary}, ...); export with the library "
        "convolutions (depthwise_impl=grouped, pointwise_impl=conv, standard_impl=conv)")
  return {"ops": dict(counts), "num_ops": sum(counts.values()), "partitions": len(partitions)}
