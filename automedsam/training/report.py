"""What the trainer prints: a progress bar over epochs, one readable line per epoch, one summary line."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from automedsam import progress

if TYPE_CHECKING:
    from automedsam.training.validation import ValidationResult


@contextmanager
def progress_bar(console: Console, epochs: int, done: int, enabled: bool = True) -> Iterator[Callable[[], None]]:
    """Yield a function that advances the bar by one epoch; it shows nothing when not `enabled` (DDP ranks > 0)."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with progress.progress_bar(enabled, console=console, columns=columns, transient=True) as bar:
        task = bar.add_task("training", total=epochs, completed=done)
        yield lambda: bar.advance(task)


def epoch_line(entry: dict[str, Any], epochs: int, is_best: bool) -> str:
    """`epoch  12/100  loss 0.4213  lr 1.0e-03  val box Dice 0.812  inside 0.934  Dice 0.781  best  1.3 s`."""
    parts = [f"epoch {entry['epoch']:>4}/{epochs}", f"loss {entry['train_loss']:.4f}", f"lr {entry['lr']:.1e}"]
    val = entry.get("val")
    if val:
        parts.append(f"val box Dice {_number(val.get('box_dice'))}")
        parts.append(f"inside {_number(val.get('inside_box_fraction'))}")
        if val.get("dice") is not None:
            parts.append(f"Dice {_number(val['dice'])}")
        if is_best:
            parts.append("[bold green]best[/bold green]")
    parts.append(f"{entry['time_s']:.1f} s")
    return "  ".join(parts)


def summary_line(summary: dict[str, Any], fold_dir: Path) -> str:
    """The one line a user reads at the end: best epoch, validation figures, time, where the outputs are."""
    per_epoch = summary["time_per_epoch_s"]  # None: a run continued after its last epoch, its log.json gone
    per_epoch_text = "n/a" if per_epoch is None else f"{per_epoch:.2f}"
    parts = [f"[bold]Finished[/bold] fold {summary['fold']} ({summary['trainer']}) in {summary['time_s']:.0f} s "
             f"({per_epoch_text} s/epoch)"]
    best = summary.get("best_val")
    if best:
        dice = f", Dice {_number(best.get('dice'))}" if best.get("dice") is not None else ""
        parts.append(f"best epoch {summary['best_epoch']}: box Dice {_number(best.get('box_dice'))}{dice}")
    else:
        parts.append(f"no validation; final epoch {summary['epochs']} kept as best")
    parts.append(f"-> {escape(str(fold_dir))}")
    return "; ".join(parts)


def target_lines(result: ValidationResult, targets: Sequence[dict[str, Any]]) -> list[str]:
    """With several targets, the final validation's box Dice of each, and a warning for every target the fold never
    predicts on the validation samples that have its box: a mean over targets hides a structure the module learnt
    to leave out (ACDC's RV after a shortened schedule)."""
    names = {int(target["label"]): str(target.get("name", target["label"])) for target in targets}
    lines = []
    if len(names) > 1:
        figures = ", ".join(f"{escape(names[label])} {_number(values['box_dice'])}"
                            for label, values in result.per_target.items())
        lines.append(f"Final validation box Dice per target: {figures}")
    for label, count in missed_targets(result).items():
        lines.append(f"[yellow]Warning:[/yellow] {escape(names[label])} was predicted on none of the {count} "
                     "validation sample(s) that have its box: this fold leaves it out. Train the planned number of "
                     "epochs, or add samples that show it (automedsam_annotate --review).")
    return lines


def missed_targets(result: ValidationResult) -> dict[int, int]:
    """Target -> number of validation samples with its box, for the targets predicted empty on all of them."""
    boxed: dict[int, list[bool]] = {}
    for entry in result.per_sample:
        if entry["boxes"]:
            boxed.setdefault(int(entry["target"]), []).append(entry["inside_box_fraction"] is None)  # None: empty
    return {label: len(flags) for label, flags in boxed.items() if all(flags)}


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
