"""`format_report`: the readable text table of a `compute_metrics` result."""

from __future__ import annotations

NAME_WIDTH = 28  # long MedMNIST class names (BloodMNIST's "immature granulocytes(...)") are cut to this


def _number(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _interval(interval) -> str:
    return "" if interval is None else f"[{_number(interval[0])}, {_number(interval[1])}]"


def _short(name: str) -> str:
    return name if len(name) <= NAME_WIDTH else name[: NAME_WIDTH - 1] + "…"


def format_report(results: dict, title: str | None = None) -> str:
    """A plain-text table: summary metrics with their 95% intervals, per-class scores and the confusion matrix."""
    lines = [title] if title else []
    lines.append(f"{results['num_samples']} samples, task: {results['task']}")
    ci_header = "95% CI (bootstrap)" if results.get("bootstrap") else ""
    lines += ["", f"{'metric':<14}{'value':>8}  {ci_header}"]
    for key, label in (("acc", "ACC"), ("auc", "AUC"), ("balanced_acc", "balanced ACC"), ("ece", "ECE")):
        lines.append(f"{label:<14}{_number(results[key]):>8}  {_interval(results.get(key + '_ci95'))}".rstrip())

    lines += ["", f"{'class':<{NAME_WIDTH}} {'precision':>9} {'recall':>7} {'f1':>7} {'auc':>7} {'support':>8}"]
    for name, row in results["per_class"].items():
        lines.append(
            f"{_short(name):<{NAME_WIDTH}} {_number(row['precision']):>9} {_number(row['recall']):>7} "
            f"{_number(row['f1']):>7} {_number(row['auc']):>7} {row['support']:>8}"
        )

    matrix = results["confusion_matrix"]
    names = list(results["per_class"])
    if results["task"].startswith("multi-label"):
        lines += ["", "confusion per label: TN FP / FN TP"]
        for name, ((tn, fp), (fn, tp)) in zip(names, matrix):
            lines.append(f"{_short(name):<{NAME_WIDTH}} {tn:>7} {fp:>7} / {fn:>7} {tp:>7}")
    else:
        width = max(6, *(len(str(v)) + 1 for row in matrix for v in row))
        lines += ["", "confusion matrix (rows: true class, columns: predicted class)"]
        lines.append(" " * (NAME_WIDTH + 1) + "".join(f"{j:>{width}}" for j in range(len(names))))
        for i, (name, row) in enumerate(zip(names, matrix)):
            lines.append(f"{_short(f'{i} {name}'):<{NAME_WIDTH}} " + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)


__all__ = ["format_report"]
