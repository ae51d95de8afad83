"""Compiled CPU kernels, built on first use and called as XLA FFI custom calls.

`kernels/depthwise.cc` (the depthwise 3x3 forward and backward) is compiled with
the system C++ compiler (`$CXX`, else g++ or c++ on PATH) against the FFI
headers that jaxlib ships, with `-march=native`. The library is cached in
`$MOBILENET_KERNEL_CACHE` (default `~/.cache/mobilenet/kernels`) under a hash
of the source, the jaxlib version, the compiler and the CPU's model and flags,
so a build for one CPU is never loaded on another that lacks its instructions.
Each build writes a temporary file and renames it into place, so processes
that build at once never load a half-written library.

Where there is no compiler or the build fails, `depthwise_available()` is
False and says why in one warning; the callers then use portable JAX code.
"""
import ctypes
import hashlib
import os
import pathlib
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading

import jax
import jaxlib
import numpy as np
from absl import logging
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

SOURCE = pathlib.Path(__file__).resolve().parent / "kernels" / "depthwise.cc"
FORWARD_TARGET = "mobilenet_depthwise3x3_forward"
BACKWARD_TARGET = "mobilenet_depthwise3x3_backward"
_COMPILE_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno")
_BUILD_TIMEOUT_S = 600

_lock = threading.Lock()
_available: bool | None = None  # None until the first call of depthwise_available()


class BuildError(RuntimeError):
  pass


def depthwise_available() -> bool:
  """Whether the depthwise kernels are built, loaded and registered with XLA:CPU."""
  global _available
  with _lock:
    if _available is None:
      try:
        _register(build())
        _available = True
      except BuildError as error:
        logging.warning("The compiled CPU depthwise kernel is unavailable (%s); "
                        "depthwise_impl=auto uses 'shifted' on CPU.", error)
        _available = False
    return _available


def cache_dir() -> pathlib.Path:
  default = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache"))
  return pathlib.Path(os.environ.get("MOBILENET_KERNEL_CACHE",
                                     default / "mobilenet" / "kernels"))


def find_compiler() -> list[str] | None:
  """The compiler command: $CXX if set (None if it is not found), else g++ or c++ on PATH."""
  if os.environ.get("CXX"):
    command = shlex.split(os.environ["CXX"])
    found = shutil.which(command[0]) if command else None
    return [found, *command[1:]] if found else None
  found = shutil.which("g++") or shutil.which("c++")
  return [found] if found else None


def compiler_identity(compiler: list[str]) -> str:
  """The command and the first line of its --version, which names the compiler's release."""
  try:
    version = subprocess.run([*compiler, "--version"], capture_output=True, text=True,
                             timeout=60).stdout.splitlines()
  except (OSError, subprocess.SubprocessError):
    version = []
  return " ".join(compiler) + " | " + (version[0] if version else "unknown version")


def cpu_identity() -> str:
  """The CPU's model name and instruction-set flags: what -march=native compiles for."""
  fields = {}
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
      for line in cpuinfo:
        if not line.strip():
          break  # the first processor's entry is enough
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
  except OSError:
    pass
  model = fields.get("model name") or platform.processor() or platform.machine()
  flags = fields.get("flags") or fields.get("Features") or ""
  return f"{model} | {flags}"


def cache_key(source: bytes, jaxlib_version: str, compiler: str, cpu: str) -> str:
  digest = hashlib.sha256()
  for part in (source, jaxlib_version.encode(), compiler.encode(), cpu.encode(),
               " ".join(_COMPILE_FLAGS).encode()):
    digest.update(len(part).to_bytes(8, "little"))
    digest.update(part)
  return digest.hexdigest()[:24]


def build() -> pathlib.Path:
  """The path of the compiled library for this source, jaxlib, compiler and CPU (built if new)."""
  compiler = find_compiler()
  if compiler is None:
    raise BuildError(f"no C++ compiler found (CXX={os.environ.get('CXX', '')!r}, "
                     "no g++ or c++ on PATH)")
  try:
    source = SOURCE.read_bytes()
  except OSError as error:
    raise BuildError(f"cannot read {SOURCE}: {error}") from error
  key = cache_key(source, jaxlib.__version__, compiler_identity(compiler), cpu_identity())
  folder = cache_dir()
  library = folder / f"depthwise-{key}.so"
  if library.exists():
    return library
  try:
    folder.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=folder, prefix=".depthwise-", suffix=".so.partial")
    os.close(handle)
  except OSError as error:
    raise BuildError(f"cannot write to {folder}: {error}") from error
  try:
    command = [*compiler, *_COMPILE_FLAGS, "-I", jax.ffi.include_dir(), str(SOURCE),
               "-o", partial]
    try:
      result = subprocess.run(command, capture_output=True, text=True,
                              timeout=_BUILD_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as error:
      raise BuildError(f"{compiler[0]} could not run: {error}") from error
    if result.returncode != 0:
      last = (result.stderr.strip().splitlines() or ["no output"])[-1]
      raise BuildError(f"{compiler[0]} failed (exit {result.returncode}): {last}")
    os.replace(partial, library)  # atomic: a concurrent build's rename is equally complete
  finally:
    if os.path.exists(partial):
      os.unlink(partial)
  return library


def _register(library: pathlib.Path) -> None:
  try:
    handlers = ctypes.CDLL(str(library))
  except OSError as error:
    raise BuildError(f"cannot load {library}: {error}") from error
  for target in (FORWARD_TARGET, BACKWARD_TARGET):
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(handlers, target)),
                                platform="cpu")


# ----------------------------------------------------------------------------
# The custom calls, partitioned over the batch.
#
# Depthwise convolution is independent per image, so a batch-sharded call runs
# on each device's shard as it is; the kernel gradient comes back per image
# ([N, 3, 3, 1, C], small next to the activations) so that its sum over the
# batch is an ordinary reduction, which the partitioner turns into one
# all-reduce. Without the partitioning rule, XLA would gather the whole batch
# onto every device around the custom call.


def _attributes(strides, pads) -> dict:
  return dict(stride_h=np.int64(strides[0]), stride_w=np.int64(strides[1]),
              pad_top=np.int64(pads[0][0]), pad_left=np.int64(pads[1][0]))


def _output_shape(x_shape, strides, pads) -> tuple[int, ...]:
  batch, height, width, channels = x_shape
  out_h = (height + pads[0][0] + pads[0][1] - 3) // strides[0] + 1
  out_w = (width + pads[1][0] + pads[1][1] - 3) // strides[1] + 1
  return batch, out_h, out_w, channels


def _require_kernels() -> None:
  if not depthwise_available():
    raise RuntimeError("the compiled CPU depthwise kernel is unavailable (see the warning)")


def _forward_call(x, kernel, strides, pads):
  _require_kernels()
  out = jax.ShapeDtypeStruct(_output_shape(x.shape, strides, pads), x.dtype)
  return jax.ffi.ffi_call(FORWARD_TARGET, out)(x, kernel, **_attributes(strides, pads))


def _backward_call(x, kernel, dy, strides, pads):
  _require_kernels()
  batch, channels = x.shape[0], x.shape[3]
  outs = (jax.ShapeDtypeStruct(x.shape, x.dtype),
          jax.ShapeDtypeStruct((batch, 3, 3, 1, channels), x.dtype))
  return tuple(jax.ffi.ffi_call(BACKWARD_TARGET, outs)(x, kernel, dy,
                                                       **_attributes(strides, pads)))


def _batch_axes(sharding):
  """The mesh axes that shard dimension 0 under `sharding` (None: not sharded or not named)."""
  if isinstance(sharding, NamedSharding) and len(sharding.spec) > 0:
    return sharding.spec[0]
  return None


def _batch_sharded(mesh, axes, ndim) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(axes, *([None] * (ndim - 1))))


def _forward_infer(strides, pads, mesh, arg_shapes, result_shape):
  del strides, pads, result_shape
  return _batch_sharded(mesh, _batch_axes(arg_shapes[0].sharding), 4)


def _forward_partition(strides, pads, mesh, arg_shapes, result_shape):
  del result_shape
  axes = _batch_axes(arg_shapes[0].sharding)
  arg_shardings = (_batch_sharded(mesh, axes, 4), _batch_sharded(mesh, None, 4))
  lower = lambda x, kernel: _forward_call(x, kernel, strides, pads)
  return mesh, lower, _batch_sharded(mesh, axes, 4), arg_shardings


def _backward_infer(strides, pads, mesh, arg_shapes, result_shape):
  del strides, pads, result_shape
  axes = _batch_axes(arg_shapes[2].sharding)
  return _batch_sharded(mesh, axes, 4), _batch_sharded(mesh, axes, 5)


def _backward_partition(strides, pads, mesh, arg_shapes, result_shape):
  del result_shape
  axes = _batch_axes(arg_shapes[2].sharding)  # dy's: the larger of the two batch-sharded inputs
  arg_shardings = (_batch_sharded(mesh, axes, 4), _batch_sharded(mesh, None, 4),
                   _batch_sharded(mesh, axes, 4))
  lower = lambda x, kernel, dy: _backward_call(x, kernel, dy, strides, pads)
  return (mesh, lower, (_batch_sharded(mesh, axes, 4), _batch_sharded(mesh, axes, 5)),
          arg_shardings)


def _forward(x, kernel, strides, pads):
  return _forward_call(x, kernel, strides, pads)


def _backward(x, kernel, dy, strides, pads):
  return _backward_call(x, kernel, dy, strides, pads)


depthwise3x3_forward = custom_partitioning(_forward, static_argnums=(2, 3))
depthwise3x3_forward.__doc__ = """y = depthwise 3x3 of x [N, H, W, C] float32 with kernel [3, 3, 1, C]."""
depthwise3x3_forward.def_partition(
    partition=_forward_partition, infer_sharding_from_operands=_forward_infer,
    sharding_rule="n h w c, i j o c -> n p q c")

depthwise3x3_backward = custom_partitioning(_backward, static_argnums=(3, 4))
depthwise3x3_backward.__doc__ = """(dx, dkernel per image [N, 3, 3, 1, C]) for the cotangent dy."""
depthwise3x3_backward.def_partition(
    partition=_backward_partition, infer_sharding_from_operands=_backward_infer,
    sharding_rule="n h w c, i j o c, n p q c -> n h w c, n i j o c")
