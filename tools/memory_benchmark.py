"""Peak resident memory of a command, its whole process tree (train.py re-executes itself under
tcmalloc and starts helpers), sampled from /proc; optionally on a folder of 320-px photographs that
it makes itself.

    python -m tools.memory_benchmark [--photo_folder=/tmp/photos320] [--json=out.json] \
        -- train.py --config=configs/dws.py:epochs=0.1 --workdir=/tmp/mem_x

`--photo_folder` writes (once; an existing folder is reused) 10 classes of smooth random-content
JPEGs of 240..320 x 320..480 pixels, either way up (about 33 KB each, like photographs of that
size), 9,025 train and 3,925 val images by default, and adds `--config.data.folder=<it>` to the
command. Resident memory does not depend on the machine's load; the wall time printed beside it
does.
"""
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

from absl import flags

from mobilenet import cli, devices, errors
from tools import runs

FLAGS = flags.FLAGS

NUM_CLASSES = 10
SAMPLE_SECONDS = 0.1


def write_photo_folder(root: pathlib.Path, *, train_images: int = 9025, val_images: int = 3925,
                       num_classes: int = NUM_CLASSES, seed: int = 0) -> pathlib.Path:
  """<root>/{train,val}/class_<k>/<i>.jpg: smooth random colour fields with a little grain, so
  that their files are about a photograph's size (a pure-noise JPEG is five times larger)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  for split, count in (("train", train_images), ("val", val_images)):
    for i in range(count):
      folder = root / split / f"class_{i % num_classes}"
      folder.mkdir(parents=True, exist_ok=True)
      short, long = int(rng.integers(240, 321)), int(rng.integers(320, 481))
      height, width = (short, long) if rng.random() < 0.7 else (long, short)
      low = rng.integers(0, 256, (max(height // 24, 2), max(width // 24, 2), 3)).astype(np.uint8)
      pixels = np.asarray(Image.fromarray(low).resize((width, height), Image.BICUBIC), np.float32)
      pixels = np.clip(pixels + rng.normal(0, 6, pixels.shape), 0, 255).astype(np.uint8)
      Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", "JPEG", quality=90)
  return root


def _tree_rss(process) -> int:
  """Resident bytes of a process and all its descendants, now."""
  import psutil  # pylint: disable=g-import-not-at-top
  total = 0
  for member in [process, *process.children(recursive=True)]:
    try:
      total += member.memory_info().rss
    except (psutil.NoSuchProcess, psutil.AccessDenied):
      pass
  return total


def peak_rss(command: list[str], *, env=None, log_path=None, trace_path=None) -> dict:
  """Runs `command` to its end, sampling its process tree's resident memory every 0.1 s
  (with trace_path, each sample as a line "<seconds> <GiB>")."""
  import psutil  # pylint: disable=g-import-not-at-top
  log = open(log_path, "w", encoding="utf-8") if log_path else subprocess.DEVNULL  # pylint: disable=consider-using-with
  start = time.perf_counter()
  load_before = os.getloadavg()[0]
  child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,  # pylint: disable=consider-using-with
                           env={**os.environ, **(env or {})})
  process = psutil.Process(child.pid)
  peak, peak_at = 0, 0.0
  trace = open(trace_path, "w", encoding="utf-8") if trace_path else None  # pylint: disable=consider-using-with
  while child.poll() is None:
    try:
      rss = _tree_rss(process)
    except psutil.NoSuchProcess:
      break
    if trace:
      trace.write(f"{time.perf_counter() - start:.1f} {rss / 2**30:.3f}\n")
    if rss > peak:
      peak, peak_at = rss, time.perf_counter() - start
    time.sleep(SAMPLE_SECONDS)
  returncode = child.wait()
  if trace:
    trace.close()
  if log_path:
    log.close()
  # What /usr/bin/time -v calls "Maximum resident set size": the largest single process's peak.
  max_single = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
  return {"returncode": returncode, "peak_tree_rss_bytes": peak,
          "peak_tree_rss_gib": round(peak / 2**30, 3), "peak_at_s": round(peak_at, 1),
          "max_single_process_rss_gib": round(max_single / 2**30, 3),
          "wall_s": round(time.perf_counter() - start, 1),
          "load_average_before": round(load_before, 2),
          "load_average_after": round(os.getloadavg()[0], 2)}


def main(argv):
  command = argv[1:]
  if command and command[0] == "--":
    command = command[1:]
  if not command:
    raise errors.ConfigError("usage: python -m tools.memory_benchmark [flags] -- train.py --config=...")
  if command[0].endswith(".py"):
    command = [sys.executable, *command]
  if FLAGS.photo_folder:
    root = pathlib.Path(FLAGS.photo_folder)
    if not (root / "val").is_dir():
      print(f"writing 320-px photographs into {root} ...", flush=True)
      write_photo_folder(root, train_images=FLAGS.train_images, val_images=FLAGS.val_images)
    command.append(f"--config.data.folder={root}")
  result = {"command": " ".join(command[1:] if command[0] == sys.executable else command),
            "cpu": devices.cpu_name(), "os.cpu_count": os.cpu_count(),
            **peak_rss(command, log_path=FLAGS.log, trace_path=FLAGS.trace)}
  print(json.dumps(result, indent=1))
  if FLAGS.json:
    pathlib.Path(FLAGS.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
  if result["returncode"]:
    raise runs.RunFailed(f"the command exited {result['returncode']}"
                     + (f"; its output is in {FLAGS.log}" if FLAGS.log else ""))


if __name__ == "__main__":
  flags.DEFINE_string("photo_folder", "", "Make (once) and train on a folder of 320-px photographs.")
  flags.DEFINE_integer("train_images", 9025, "Train images of --photo_folder.")
  flags.DEFINE_integer("val_images", 3925, "Val images of --photo_folder.")
  flags.DEFINE_string("json", "", "Also write the result here.")
  flags.DEFINE_string("log", "", "The command's output goes here (default: discarded).")
  flags.DEFINE_string("trace", "", "Every sample, as lines '<seconds> <GiB>', goes here.")
  cli.run(main, takes_arguments=True)
