"""The recipe search on held-out data: MobileNet-1.0 at 128 px, trained on the first 90% of each
training class (`train[:90%]`) and scored on the other tenth (`train[90%:]`); the validation
split is never read.

    python -m tools.tune [--epochs 5] [--dry-run] [--report-only] [--lanes N]
                             [--workdirs runs/tune] [--results results/tuning]
                             [--confirm-at E [--seeds 0,1]]

The search runs in stages, each decided by the finished results of the stages before it, so
that a rerun resumes where it stopped (each run also resumes from its own checkpoints):
  1. the peak learning rate, over 8x, everything else as START;
  2. one change at a time from stage 1's best: schedule, optimizer, weight decay, label
     smoothing, dropout, minimum crop area, batch size, parameter EMA (FACTORS);
  3. stage 1's best with every change of stage 2 that helped (the best one per factor), when
     two or more did;
  4. a second seed of the winner and of the runner-up, so that the choice is not noise, and of
     the start, so that the gain is weighed against the start's own spread (this one is decided
     with stage 2 and trains beside stage 3: no stage waits for it).
`--lanes N` trains up to N decided trials at once, each pinned to its share of the cores (see
tools.lanes), its console in `<workdir>.log`. Each run is an ordinary train.py run in
`--workdirs/<name>`; finished runs keep their eval_results.json, config.json and metrics.jsonl
in `--results/runs/<name>`, and the ranked table (held-out top-1, final training loss, training
time) and its plot go to `--results`.

Where the search starts and what it tries (START, LEARNING_RATES, FACTORS) are data, in
configs/experiments.py.

The search's budget is a proxy for the tables' longer one. `--confirm-at E` checks that the choice
holds there: it retrains the start recipe and the finished search's winner for E epochs on the same
held-out split (`--seeds`, default 0) and ranks the two in `--results/at_E_epochs`.
"""
import dataclasses
import json
import pathlib
import sys
import textwrap
from typing import Any, Callable, Optional

from absl import flags

from configs import experiments
from mobilenet import errors, metrics, results
from mobilenet.metrics import format_duration
from tools import command_line, lanes, runs

CONFIG_FILE = experiments.SEARCH_CONFIG_FILE
HELD_OUT = experiments.HELD_OUT
START = experiments.SEARCH_START
LEARNING_RATES = experiments.SEARCH_LEARNING_RATES
FACTORS = experiments.SEARCH_FACTORS
ABBREVIATIONS = {
    "optimizer.learning_rate": "lr", "optimizer.name": "", "optimizer.schedule": "",
    "optimizer.weight_decay": "wd", "optimizer.label_smoothing": "ls",
    "model.dropout_rate": "drop", "data.min_area": "crop", "train.global_batch_size": "batch",
    "optimizer.ema_decay": "ema",
}
SECOND_SEED = 1


@dataclasses.dataclass(frozen=True)
class Trial:
  """One run: START with `changes` (field -> value, sorted by field), for `epochs`, with `seed`."""
  changes: tuple[tuple[str, Any], ...]
  epochs: float
  seed: int = 0
  stage: str = ""

  @property
  def recipe(self) -> str:
    """The name of the recipe, the same for every seed."""
    parts = [f"{ABBREVIATIONS[field]}{value:g}" if isinstance(value, (int, float))
             else f"{ABBREVIATIONS[field]}{value}" for field, value in self.changes]
    return f"dws_e{self.epochs:g}_" + "_".join(parts)

  @property
  def name(self) -> str:
    return f"{self.recipe}_s{self.seed}"

  @property
  def config(self) -> str:
    return f"{CONFIG_FILE}:seed={self.seed}"

  def flags(self) -> list[str]:
    settings = {**HELD_OUT, **START, "train.num_epochs": float(self.epochs), **dict(self.changes)}
    return [f"--config.{field}={value}" for field, value in settings.items()]


def trial(changes: dict, epochs: float, stage: str, seed: int = 0) -> Trial:
  return Trial(tuple(sorted(changes.items())), epochs, seed, stage)


@dataclasses.dataclass
class Folders:
  workdirs: pathlib.Path
  results: pathlib.Path
  # A finished trial's held-out top-1, read once: planning compares the same trials many times.
  _top1: dict = dataclasses.field(default_factory=dict, repr=False)

  def kept(self, item: Trial) -> pathlib.Path:
    return self.results / "runs" / item.name

  def finished(self, item: Trial) -> bool:
    return (self.kept(item) / "eval_results.json").is_file()

  def top1(self, item: Trial) -> Optional[float]:
    """The trial's held-out top-1; None until it has finished."""
    if item.name not in self._top1:
      if not self.finished(item):
        return None
      self._top1[item.name] = results.read_json(self.kept(item) / "eval_results.json")["top1"]
    return self._top1[item.name]


def best(folders: Folders, trials: list[Trial]) -> Trial:
  return max(trials, key=lambda item: folders.top1(item))


def plan(folders: Folders, epochs: float) -> tuple[list[Trial], bool]:
  """The trials decided so far, and whether they are all: a stage is decided only once every
  trial of the stages before it has finished."""
  stage1 = [trial({"optimizer.learning_rate": rate}, epochs, "1: learning rate")
            for rate in LEARNING_RATES]
  trials = list(stage1)
  if not all(map(folders.finished, stage1)):
    return trials, False
  base = best(folders, stage1)
  variants = {factor: [trial({**dict(base.changes), **change}, epochs, f"2: {factor}")
                       for change in changes] for factor, changes in FACTORS.items()}
  stage2 = [item for items in variants.values() for item in items]
  # The start's second seed measures the noise the tuned recipe's gain is judged against; no
  # stage waits for it, so it trains beside stage 3, in the lane that would otherwise be idle.
  start_again = trial({"optimizer.learning_rate": START["optimizer.learning_rate"]}, epochs,
                      "4: second seed", seed=SECOND_SEED)
  trials += [*stage2, start_again]
  if not all(map(folders.finished, stage1 + stage2)):
    return trials, False

  gains = []  # (gain over base, factor, change) of the best variant of each factor that helped
  for factor, items in variants.items():
    winner = best(folders, items)
    if folders.top1(winner) > folders.top1(base):
      change = FACTORS[factor][items.index(winner)]
      gains.append((folders.top1(winner) - folders.top1(base), factor, change))
  if len(gains) >= 2:
    combined, changed = dict(base.changes), set()
    for _, _, change in sorted(gains, key=lambda entry: -entry[0]):
      if changed.isdisjoint(change):  # a factor that touches a field already changed is left out
        combined.update(change)
        changed.update(change)
    candidate = trial(combined, epochs, "3: combined")
    if candidate.name not in {item.name for item in trials}:  # not one of stage 2's trials
      trials.append(candidate)
      if not folders.finished(candidate):
        return trials, False

  first_seeds = [item for item in trials if item.seed == 0]
  first, second = sorted(first_seeds, key=lambda item: -folders.top1(item))[:2]
  again = [dataclasses.replace(item, seed=SECOND_SEED, stage="4: second seed")
           for item in (first, second)]
  trials += [item for item in again if item != start_again]
  return trials, True


def stale_reason(folders: Folders, item: Trial) -> Optional[str]:
  """Why the trial's result or unfinished run was made with other settings; None if it was not."""
  folder = folders.kept(item) if folders.finished(item) else folders.workdirs / item.name
  if not (folder / "config.json").is_file():
    return None
  stored = results.read_json(folder / "config.json")
  differences = runs.config_differences(stored, runs.requested_config(item.config, item.flags()))
  if not differences:
    return None
  return f"{folder} was made with {differences[0]}; move it away to run the trial afresh"


def stale_reasons(folders: Folders, trials: list[Trial]) -> list[str]:
  return [reason for reason in (stale_reason(folders, item) for item in trials) if reason]


def run(folders: Folders, item: Trial, cpus: Optional[tuple[int, ...]] = None) -> None:
  """Trains the trial (resuming its workdir; pinned to `cpus` where given) and keeps its
  results; raises RunFailed."""
  workdir = folders.workdirs / item.name
  runs.run_training(item.name, [sys.executable, "train.py", f"--config={item.config}",
                                f"--workdir={workdir}", *item.flags()], workdir, cpus)
  runs.keep_results(workdir, folders.kept(item))


class SearchUnfinished(errors.UserError, RuntimeError):
  """The confirmation was asked for before the search it confirms had finished."""


def confirmation(search: Folders, search_epochs: float, epochs: float,
                 seeds: tuple[int, ...]) -> tuple[list[Trial], bool]:
  """The start recipe and the search's winner, each retrained for `epochs` with every seed: does
  the choice made at the search's short budget hold at the tables' longer one? Raises
  SearchUnfinished."""
  searched, complete = plan(search, search_epochs)
  if not (complete and all(map(search.finished, searched))):
    raise SearchUnfinished(f"the {search_epochs:g}-epoch search in {search.results} has not "
                           "finished; finish it before confirming its winner")
  winner = ranking(search, searched)[0]["changes"]
  start = {"optimizer.learning_rate": START["optimizer.learning_rate"]}
  trials = {}  # by name: a search whose winner is the start confirms one recipe
  for seed in seeds:
    for stage, changes in (("confirm: start", start), ("confirm: winner", winner)):
      item = trial(changes, epochs, stage, seed)
      trials.setdefault(item.name, item)
  return list(trials.values()), True


Decide = Callable[[], tuple[list[Trial], bool]]  # the trials decided so far, and whether all


def next_trial(folders: Folders, decide: Decide, running: set[str]) -> Optional[Trial]:
  """The first decided trial that has neither finished nor started; None when there is none
  now, or when a decided trial is stale (main reports it)."""
  # A running trial's workdir is being written by its train.py; it was checked at its start.
  idle = [item for item in decide()[0] if item.name not in running]
  missing = [item for item in idle if not folders.finished(item)]
  if not missing or stale_reasons(folders, idle):
    return None
  return missing[0]


def train_decided(folders: Folders, decide: Decide, lane_count: int) -> None:
  """Trains every decided trial that has not finished, `lane_count` at a time; a finished trial
  may decide the next stage. Raises RunFailed."""

  def next_job(running: set[str]) -> Optional[lanes.Job]:
    item = next_trial(folders, decide, running)
    return None if item is None else lanes.Job(item.name, lambda cpus: run(folders, item, cpus))

  lanes.run_side_by_side(next_job, lane_count)


# ---------------------------------------------------------------- the ranked table

def final_train_loss(metrics_file: pathlib.Path) -> Optional[float]:
  losses = [record["loss"] for record in metrics.read_records(metrics_file)
            if record.get("kind") == "train"]
  return losses[-1] if losses else None


def ranking(folders: Folders, trials: list[Trial]) -> list[dict]:
  """One entry per recipe with a finished run, best mean held-out top-1 first."""
  recipes: dict[str, dict] = {}
  for item in trials:
    if not folders.finished(item):
      continue
    record = results.read_json(folders.kept(item) / "eval_results.json")
    entry = recipes.setdefault(item.recipe, dict(
        recipe=item.recipe, stage=item.stage, changes=dict(item.changes), seeds=[], top1=[],
        final_train_loss=[], train_wall_s=[], devices=[]))
    entry["seeds"].append(item.seed)
    entry["top1"].append(record["top1"])
    entry["final_train_loss"].append(final_train_loss(folders.kept(item) / "metrics.jsonl"))
    entry["train_wall_s"].append(record.get("train_wall_s"))
    entry["devices"].append(record.get("device"))
  ranked = sorted(recipes.values(), key=lambda entry: -sum(entry["top1"]) / len(entry["top1"]))
  for entry in ranked:
    entry["mean_top1"] = sum(entry["top1"]) / len(entry["top1"])
  return ranked


def describe(changes: dict) -> str:
  differences = {field: value for field, value in changes.items() if START.get(field) != value}
  return ", ".join(f"{field}={value}" for field, value in differences.items()) or "(start)"


def markdown(ranked: list[dict], title: str, complete: bool) -> str:
  lines = [f"# {title}, held-out top-1",
           "",
           f"Trained on `{HELD_OUT['data.train_split']}` of each Imagenette class, scored on "
           f"`{HELD_OUT['data.eval_split']}` (the validation split is not used). Made by "
           "`python -m tools.tune`; each recipe is the start recipe with the listed changes.",
           "", *([] if complete else ["Not finished: runs are still to train or to decide.", ""]),
           "| Rank | Recipe | Stage | Changes from the start | Seeds | Held-out top-1 | "
           "Final train loss | Train time | Trained on |",
           "|---:|---|---|---|---:|---:|---:|---:|---|"]
  for rank, entry in enumerate(ranked, 1):
    per_seed = " / ".join(f"{value:.1%}" for value in entry["top1"])
    accuracy = (f"{entry['mean_top1']:.1%}" if len(entry["top1"]) == 1
                else f"{entry['mean_top1']:.1%} ({per_seed})")
    losses = [value for value in entry["final_train_loss"] if value is not None]
    loss = f"{sum(losses) / len(losses):.3f}" if losses else "n/a"
    times = [value for value in entry["train_wall_s"] if value is not None]
    time = format_duration(sum(times) / len(times)) if times else "n/a"
    trained_on = " / ".join(dict.fromkeys(device or "n/a" for device in entry["devices"]))
    lines.append(f"| {rank} | {entry['recipe']} | {entry['stage']} | {describe(entry['changes'])} "
                 f"| {len(entry['seeds'])} | {accuracy} | {loss} | {time} | {trained_on} |")
  lines += ["", "Start recipe: " + ", ".join(f"{field}={value}" for field, value in START.items()),
            "", "Final train loss: the last logged training loss (label-smoothed where the "
            "recipe smooths, so compare it only between recipes with the same smoothing). "
            "Train time: the training steps, evaluation excluded (mean over seeds), on the cores "
            "named in the last column (`1 of 2 cores`: a run in a lane of `--lanes 2`, beside "
            "another)."]
  return "\n".join(lines) + "\n"


def plot(ranked: list[dict], path: pathlib.Path, title: str, epochs: float) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot  # pylint: disable=import-outside-toplevel
  title_lines = textwrap.wrap(title, 80)  # the bars start right of long recipe names
  figure, axes = pyplot.subplots(figsize=(8, 0.35 * len(ranked) + 1 + 0.25 * len(title_lines)))
  names = [entry["recipe"] for entry in ranked][::-1]
  means = [entry["mean_top1"] * 100 for entry in ranked][::-1]
  axes.barh(names, means, color="#9ecae1")
  for row, entry in enumerate(ranked[::-1]):
    axes.plot([value * 100 for value in entry["top1"]], [row] * len(entry["top1"]), "k.")
  axes.set_xlim(min(means) - 5, max(means) + 2)
  axes.set_xlabel(f"held-out top-1 (%) after {epochs:g} epochs; dots: seeds")
  figure.suptitle("\n".join(title_lines))
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  pyplot.close(figure)


def write_ranking(folders: Folders, trials: list[Trial], epochs: float, complete: bool,
                  title: str) -> None:
  ranked = ranking(folders, trials)
  if not ranked:
    print("tune: no finished runs yet", file=sys.stderr)
    return
  folders.results.mkdir(parents=True, exist_ok=True)
  (folders.results / "tuning.json").write_text(json.dumps(
      dict(epochs=epochs, held_out=HELD_OUT, start=START, complete=complete, recipes=ranked),
      indent=2) + "\n")
  (folders.results / "tuning.md").write_text(markdown(ranked, title, complete))
  plot(ranked, folders.results / "tuning.png", title, epochs)
  print(f"tune: {len(ranked)} recipes ranked in {folders.results / 'tuning.md'}")


def define_flags(flag_values: flags.FlagValues) -> None:
  flags.DEFINE_float("epochs", 5.0, "the budget of every run", flag_values=flag_values)
  flags.DEFINE_string("workdirs", None, "where the trials' workdirs live (default: runs/tune in "
                      "the project)", flag_values=flag_values)
  flags.DEFINE_string("results", None, "where the finished trials and the ranking go (default: "
                      "results/tuning in the project)", flag_values=flag_values)
  flags.DEFINE_integer("lanes", 1, "train up to N trials at once, each pinned to its share of the "
                       "cores", flag_values=flag_values)
  flags.DEFINE_float("confirm-at", None, "retrain the start and the finished search's winner for "
                     "E epochs", flag_values=flag_values)
  flags.DEFINE_string("seeds", "0", "--confirm-at: the seeds of each recipe, S,S,...",
                      flag_values=flag_values)
  flags.DEFINE_boolean("dry-run", False, "list the trials decided so far",
                       flag_values=flag_values)
  flags.DEFINE_boolean("report-only", False, "rebuild the ranking only", flag_values=flag_values)


def main(command: command_line.CommandLine) -> None:
  values = command.flags
  search_epochs, confirm_at = values.epochs, values["confirm-at"].value
  dry_run, report_only = values["dry-run"].value, values["report-only"].value
  seeds = tuple(runs.parse_seeds(values.seeds))
  if confirm_at is not None and not confirm_at > 0:
    raise errors.ConfigError(f"--confirm-at: {confirm_at:g} is not a positive number of epochs")
  lanes.cpu_sets(values.lanes)
  search = Folders(runs.resolved_folder(values.workdirs, runs.RUNS / "tune"),
                   runs.resolved_folder(values.results, runs.RESULTS / "tuning"))
  if confirm_at is None:
    folders, epochs = search, search_epochs
    title = f"Recipe search: MobileNet-1.0 at 128 px, {epochs:g} epochs"
    decide: Decide = lambda: plan(search, search_epochs)
  else:
    folders = Folders(search.workdirs, search.results / f"at_{confirm_at:g}_epochs")
    epochs = confirm_at
    title = (f"Start and winner of the {search_epochs:g}-epoch recipe search, retrained for "
             f"{epochs:g} epochs: MobileNet-1.0 at 128 px")
    decide = lambda: confirmation(search, search_epochs, confirm_at, seeds)
    decide()  # SearchUnfinished before anything runs
  if not (dry_run or report_only):
    train_decided(folders, decide, values.lanes)
  trials, decided = decide()
  reasons = stale_reasons(folders, trials)
  if dry_run:
    width = max(len(item.name) for item in trials)
    for item in trials:
      print(f"{item.name:<{width}} {item.stage:<20} "
            f"{'done' if folders.finished(item) else 'missing'}")
    if not decided:
      print("(later stages are decided when these have finished)")
  if dry_run or reasons:
    runs.report_stale(reasons, dry_run=dry_run)
    return
  write_ranking(folders, trials, epochs, decided and all(map(folders.finished, trials)), title)


TOOL = command_line.Tool(define_flags, main)

if __name__ == "__main__":
  TOOL.start()
