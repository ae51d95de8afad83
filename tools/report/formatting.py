"""How a report writes its figures and names: cells, device labels, the notes under a table."""
from typing import Callable, Iterable, Optional, Sequence

from mobilenet.metrics import format_duration
from tools.report.aggregate import ModelRow, only_value
from tools.report.load import CPU_PREFIX, Run
from tools.report.paper import PaperRow


# Display names by prefix, longest first: the trainer writes a folder's name
# ("imagenette2-224") or a tfds name ("imagenet2012").
DATASET_LABELS = (("imagenette", "Imagenette"), ("imagenet", "ImageNet"))

# Words that name a CPU's maker or kind rather than the CPU, left out of its short label.
MAKER_WORDS = ("Intel", "AMD", "Processor", "CPU")


def dataset_label(dataset: str) -> str:
  """"imagenet2012" -> "ImageNet", "imagenette2-224" -> "Imagenette"; others as written."""
  for prefix, label in DATASET_LABELS:
    if dataset.lower().startswith(prefix):
      return label
  return dataset


def format_images_per_s(value: float) -> str:
  return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def count_label(runs: Sequence[Run]) -> str:
  seeds = [run.seed for run in runs]
  distinct_seeds = None not in seeds and len(set(seeds)) == len(seeds)
  return f"{len(runs)} {'seeds' if distinct_seeds else 'runs'}"


def format_ms(value: Optional[float]) -> str:
  """Milliseconds: a decimal below 100 ms; "—" for a run that was not exported."""
  if value is None:
    return "—"
  return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def device_labels(devices: Sequence[str]) -> dict:
  """Short names for the devices of one table, so that a timing cell can say where it was
  measured: "cpu: Intel(R) Xeon(R) Processor, 2 cores" -> "Xeon", or "Xeon 2 cores" where the
  cores tell two devices apart, or the full names where neither does."""
  def short(device: str, with_cores: bool) -> str:
    name, _, cores = device.removeprefix(CPU_PREFIX).partition(",")
    for mark in ("(R)", "(TM)", "(r)", "(tm)"):
      name = name.replace(mark, "")
    words = [word for word in name.split() if word not in MAKER_WORDS]
    return " ".join(words + (cores.split() if with_cores else []))
  for with_cores in (False, True):
    labels = {device: short(device, with_cores) for device in devices}
    if "" not in labels.values() and len(set(labels.values())) == len(labels):
      return labels
  return {device: device for device in devices}


def timing_labels(devices: Sequence[str]) -> Optional[dict]:
  """device_labels for a table's timing cells; None where every timing comes from one device
  (its cells then go unmarked and the note under the table names it)."""
  return device_labels(devices) if len(devices) > 1 else None


def format_timing(by_device: dict, format_value: Callable[[float], str],
                  labels: Optional[dict]) -> str:
  """A timing cell: the value, or one value per device, each marked with its device, where a
  table's timings come from several (labels given); "—" where none was measured."""
  if not by_device:
    return "—"
  if labels is None:
    return format_value(only_value(by_device))
  return ", ".join(f"{format_value(value)} ({labels[device]})"
                   for device, value in by_device.items())


def format_duration_or_dash(seconds: Optional[float]) -> str:
  return "—" if seconds is None else format_duration(seconds)


def format_percent(value: Optional[float], spread: Optional[float] = None) -> str:
  if value is None:
    return "—"
  return f"{100 * value:.1f}%" + ("" if spread is None else f" ± {100 * spread:.1f}")


def format_accuracy(row: ModelRow) -> str:
  text = f"{100 * row.top1_mean:.1f}%"
  if row.top1_spread is not None:
    text += f" ± {100 * row.top1_spread:.1f} ({count_label(row.runs)})"
  return text


def format_paper(paper: Optional[PaperRow]) -> str:
  if paper is None:
    return "—"
  return (f"{paper.top1_percent:.1f}% / {paper.million_mult_adds}M / {paper.million_params:g}M "
          f"({paper.name})")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]],
                   text_columns: Sequence[str]) -> list[str]:
  """Numbers right-aligned so that their digits line up when rendered; text left."""
  align = ["---" if column in text_columns else "---:" for column in header]
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return lines


def devices_note(devices: Sequence[str], runs: str) -> str:
  """Where the timings were measured; with several devices, how the cells mark them."""
  if not devices:  # only optional timings (train time), and no run recorded one
    return "none was recorded."
  if len(devices) == 1:
    return f"on {devices[0]}."
  labels = device_labels(devices)
  return ("on several devices, whose timings are never averaged together: each timing cell "
          f"gives the mean over one device's {runs}, marked with the device: "
          + "; ".join(device if labels[device] == device else f"{labels[device]} = {device}"
                      for device in devices) + ".")


def unfinished_note(unfinished: Sequence[str]) -> list[str]:
  """A report of part of a table says which of its runs it is still waiting for."""
  if not unfinished:
    return []
  return [f"Not finished yet, so not in this report: {', '.join(unfinished)}.", ""]
