"""The study report: one self-contained HTML file of plots and tables, or the plots as PNG images.

Everything is read from the study database (trial values and autopeft's user attributes), so a
report can be written on any machine that reaches the storage, without the model or the data.
The plots are Plotly figures with plotly.js inlined once, so the file opens offline (``--plotly-js
cdn`` loads it from plotly's CDN instead: a file of a few hundred kB); ``--png
renders the same figures through kaleido, which drives a local Chrome or Chromium.
"""

from __future__ import annotations

import html
import json
import math
import statistics
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autopeft.errors import AutopeftError, first_line
from autopeft.storage.results import (
    Standard,
    best_trial,
    feasible_trials,
    metric_sign,
    outcome,
    pareto_front,
    reason,
    refit_record,
    winner,
)

__all__ = ["build_figures", "method_table", "outcome_table", "write_html", "write_pngs", "FIGURES"]

#: Figure names, in report order, with their titles.
FIGURES = {
    "pareto": "Pareto front: metric against trainable parameters",
    "history": "Optimisation history",
    "importance": "Parameter importances per method (fANOVA)",
    "blocks": "What the front configurations train, block by block",
    "race": "The race: each entrant's metric by rung, one point a paired seed (short rungs rank by the loss)",
}
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _method(trial: FrozenTrial) -> str:
    """A trial's method as its name, whatever the record holds (an old or tampered one may hold
    anything): the report draws what it can instead of failing on one trial."""
    return str(trial.user_attrs.get("method"))


def _colors(study: optuna.Study) -> dict[str, str]:
    methods = sorted({_method(t) for t in study.get_trials(deepcopy=False) if "method" in t.user_attrs})
    return {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(methods)}


def _hover(t: FrozenTrial, metric: str) -> str:
    a = t.user_attrs
    assert t.values is not None
    return (
        f"trial {t.number} · {a['method']}<br>{metric} {t.values[0]:.4f} · {a['trainable_params']:,} params"
        f"<br>lr {a.get('learning_rate', 0):.2e}<br>{html.escape(str(a.get('config', '')))}"
    )


def _empty(fig: Any, text: str) -> Any:
    fig.add_annotation(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font={"size": 14})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def _same_point(trials: list[FrozenTrial]) -> list[list[FrozenTrial]]:
    """Trials grouped by (size, metric): one marker each, so that no trial hides behind another."""
    groups: dict[tuple[int, float], list[FrozenTrial]] = {}
    for t in trials:
        assert t.values is not None
        groups.setdefault((t.user_attrs["trainable_params"], round(float(t.values[0]), 6)), []).append(t)
    return list(groups.values())


def _baseline_line(fig: Any, standard: Standard) -> None:
    """A dotted line at each baseline: the one a trial must beat in red, the others (the untuned base
    model's, where the task scores it) in grey."""
    if standard.baseline is None:
        return
    for i, (name, value) in enumerate([(standard.baseline_name, standard.baseline), *standard.others]):
        fig.add_hline(
            y=value,
            line_dash="dot",
            line_color="#7f7f7f" if i else "#d62728",
            annotation_text=f"{name} baseline {value:.4f}",
            annotation_position="top right" if i else "bottom right",
        )


def _pareto(study: optuna.Study, metric: str, standard: Standard) -> Any:
    import plotly.graph_objects as go

    from autopeft.storage.results import confirm_record

    fig = go.Figure()
    trials = feasible_trials(study, standard.budget)
    if not trials:
        return _empty(fig, "no feasible complete trial yet")
    colors = _colors(study)
    for method, color in colors.items():
        groups = _same_point([t for t in trials if _method(t) == method])
        if groups:
            fig.add_trace(
                go.Scatter(
                    x=[g[0].user_attrs["trainable_params"] for g in groups],
                    y=[g[0].values[0] for g in groups if g[0].values],
                    mode="markers+text",
                    name=method,
                    marker={"color": color, "size": [9 + 3 * (len(g) - 1) for g in groups], "opacity": 0.55},
                    text=[f"×{len(g)}" if len(g) > 1 else "" for g in groups],
                    textposition="middle right",
                    hovertext=["<br>―<br>".join(_hover(t, metric) for t in g) for g in groups],
                    hoverinfo="text",
                )
            )
    front = pareto_front(study, budget=standard.budget)
    attrs = study.user_attrs  # one read: each is a query
    confirmed = [confirm_record(study, t, attrs) for t in front]  # a bad record is skipped, with a warning
    fig.add_trace(
        go.Scatter(
            x=[t.user_attrs["trainable_params"] for t in front],
            y=[t.values[0] for t in front if t.values],
            mode="lines+markers",
            line={"shape": "hv", "color": "black", "width": 1.5},
            marker={"color": [colors[_method(t)] for t in front], "size": 13, "line": {"width": 2}},
            name="Pareto front",
            hovertext=[_hover(t, metric) for t in front],
            hoverinfo="text",
        )
    )
    refit = [refit_record(study, t, attrs) for t in trials]
    for records, points, symbol, name in (
        (confirmed, front, "diamond-open", "confirmed mean ± std"),
        (refit, trials, "star-open", "refit mean ± std (validation)"),
    ):
        if any(records):
            fig.add_trace(
                go.Scatter(
                    x=[t.user_attrs["trainable_params"] for t, c in zip(points, records) if c],
                    y=[c["mean"] for c in records if c],
                    error_y={"type": "data", "array": [c["std"] for c in records if c]},
                    mode="markers",
                    marker={"symbol": symbol, "size": 12, "color": "black"},
                    name=name,
                )
            )
    if standard.budget:
        fig.add_vline(x=standard.budget, line_dash="dash", line_color="gray")
        # add_vline's own label lands off the plot on a log axis (plotly places it at the linear x):
        # an annotation on a log axis takes log10 of the value.
        fig.add_annotation(
            x=math.log10(standard.budget),
            xref="x",
            y=1,
            yref="paper",
            text=f"budget {standard.budget:,}",
            showarrow=False,
            xanchor="right",
            yanchor="bottom",
        )
    _baseline_line(fig, standard)
    fig.update_xaxes(type="log", title="trainable parameters")
    fig.update_yaxes(title=metric)
    return fig


def _history(study: optuna.Study, metric: str, standard: Standard) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    trials = sorted(feasible_trials(study, standard.budget), key=lambda t: t.number)
    if not trials:
        return _empty(fig, "no feasible complete trial yet")
    for method, color in _colors(study).items():
        mine = [t for t in trials if _method(t) == method]
        if mine:
            fig.add_trace(
                go.Scatter(
                    x=[t.number for t in mine],
                    y=[t.values[0] for t in mine if t.values],
                    mode="markers",
                    name=method,
                    marker={"color": color, "size": 9},
                    hovertext=[_hover(t, metric) for t in mine],
                    hoverinfo="text",
                )
            )
    pruned = [(t, v) for t in study.get_trials(deepcopy=False) if (v := _last_value(t)) is not None]
    if pruned:
        fig.add_trace(
            go.Scatter(
                x=[t.number for t, _ in pruned],
                y=[v for _, v in pruned],
                mode="markers",
                name="pruned (last value)",
                marker={"color": "gray", "symbol": "x", "size": 8},
                hovertext=[f"trial {t.number} · {t.user_attrs.get('method')} · pruned" for t, _ in pruned],
                hoverinfo="text",
            )
        )
    sign = metric_sign(study)
    best, running = [], float("-inf")
    for t in trials:
        assert t.values is not None
        running = max(running, sign * t.values[0])
        best.append(sign * running)
    fig.add_trace(
        go.Scatter(
            x=[t.number for t in trials], y=best, mode="lines", line={"shape": "hv", "color": "black"}, name="best"
        )
    )
    _baseline_line(fig, standard)
    fig.update_xaxes(title="trial")
    fig.update_yaxes(title=metric)
    return fig


def _last_value(trial: FrozenTrial) -> float | None:
    """The last metric a pruned trial reported (Optuna's for one objective, ours for two), or None."""
    if trial.state != TrialState.PRUNED:
        return None
    values = trial.intermediate_values or {int(k): v for k, v in trial.user_attrs.get("intermediate", {}).items()}
    return values[max(values)] if values else None


def _importances(study: optuna.Study, standard: Standard) -> dict[str, dict[str, float]]:
    """fANOVA importance of each method's parameters over that method's feasible trials.

    Per method, because the parameters are conditional on the method: over all trials only
    ``method`` itself is shared. Methods with fewer than 4 trials, or one parameter, are left out.
    """
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    result = {}
    by_method: dict[str, list[FrozenTrial]] = {}
    for t in feasible_trials(study, standard.budget):
        by_method.setdefault(_method(t), []).append(t)
    for method, trials in sorted(by_method.items()):
        names = sorted({n for t in trials for n in t.params if n != "method"})
        if len(trials) < 4 or len(names) < 2:
            continue
        sub = optuna.create_study(directions=study.directions)
        sub.add_trials(trials)
        try:
            result[method] = get_param_importances(
                sub, evaluator=FanovaImportanceEvaluator(seed=0), params=names, target=lambda t: t.values[0]
            )
        except (RuntimeError, ValueError):  # e.g. every trial has the same value: nothing to attribute
            continue
    return result


def _importance(study: optuna.Study, standard: Standard) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    found = _importances(study, standard)
    if not found:
        return _empty(go.Figure(), "needs at least 4 feasible trials of a method with 2 or more parameters")
    colors = _colors(study)
    fig = make_subplots(rows=1, cols=len(found), subplot_titles=list(found), horizontal_spacing=0.12)
    for col, (method, values) in enumerate(found.items(), 1):
        top = sorted(values.items(), key=lambda kv: kv[1])[-12:]
        fig.add_trace(
            go.Bar(
                x=[v for _, v in top],
                y=[k.removeprefix(f"{method}.") for k, _ in top],
                orientation="h",
                marker_color=colors.get(method, "gray"),
                name=method,
                showlegend=False,
            ),
            row=1,
            col=col,
        )
    fig.update_xaxes(title="importance", range=[0, 1])
    return fig


def _per_block_values(config: dict[str, Any], n_blocks: int) -> tuple[str, list[Any]] | None:
    """The configuration's per-block list (LoRA ``ranks``, adapter ``sizes``, ``blocks`` on/off), if any."""
    for key, value in config.items():
        if isinstance(value, list) and len(value) == n_blocks:
            return key, value
    return None


def _blocks(study: optuna.Study, metric: str, standard: Standard) -> Any:
    import plotly.graph_objects as go

    rows = [t for t in pareto_front(study, budget=standard.budget) if t.user_attrs.get("block_params")]
    if not rows:
        return _empty(go.Figure(), "no front trial records its trainable parameters per block yet")
    n_blocks = len(rows[0].user_attrs["block_params"])
    z, text, labels = [], [], []
    for t in rows:
        a = t.user_attrs
        assert t.values is not None
        z.append(a["block_params"])
        per_block = _per_block_values(json.loads(a.get("config", "{}")), n_blocks)
        text.append([f"{per_block[0]}={v}" if per_block else "" for v in (per_block[1] if per_block else z[-1])])
        labels.append(f"#{t.number} {a['method']} {a['trainable_params']:,} · {t.values[0]:.4f}")
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[f"block {i}" for i in range(n_blocks)],
            y=labels,
            text=text,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            colorbar={"title": "trainable<br>params"},
            hovertemplate="%{y}<br>%{x}: %{z:,} trainable<br>%{text}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed", title=f"front trial (params · {metric})")
    fig.update_xaxes(title="block (0 = next to the embeddings)")
    return fig


def _race(study: optuna.Study, metric: str) -> Any:
    """Each race entrant's trainings by rung (x: the rung, spread by paired seed; y: the metric), a
    line through its means, the recommendation drawn thick; hover gives the seed and validation loss."""
    import plotly.graph_objects as go

    fig = go.Figure()
    by_entrant: dict[str, list[tuple[int, int, float, FrozenTrial]]] = {}
    for t in study.get_trials(deepcopy=False):
        race = t.user_attrs.get("race")
        if isinstance(race, dict) and t.values is not None and isinstance(race.get("rung"), int):
            by_entrant.setdefault(str(race.get("entrant")), []).append(
                (race["rung"], int(race["seed"]), t.values[0], t)
            )
    if not by_entrant:
        return _empty(fig, "not a raced study ([search] race = false, or two objectives)")
    decided = study.user_attrs.get("race_decision")
    chosen = decided.get("chosen") if isinstance(decided, dict) else None
    for i, (key, points) in enumerate(sorted(by_entrant.items())):
        color = _PALETTE[i % len(_PALETTE)]
        rungs = sorted({r for r, _, _, _ in points})
        means = [
            sum(v for r, _, v, _ in points if r == rung) / sum(1 for p in points if p[0] == rung) for rung in rungs
        ]
        width = 4 if key == chosen else 1
        fig.add_trace(
            go.Scatter(
                x=[r + 1 for r in rungs],
                y=means,
                mode="lines",
                name=key,
                legendgroup=key,
                line={"color": color, "width": width},
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[r + 1 + 0.06 * (s - 1) for r, s, _, _ in points],
                y=[v for _, _, v, _ in points],
                mode="markers",
                legendgroup=key,
                showlegend=False,
                marker={"color": color, "size": 8},
                hovertext=[
                    f"{key} · rung {r + 1} · seed {s + 1} · trial {t.number} · {metric} {v:.4f}"
                    + (f" · validation loss {t.user_attrs['validation_loss']:.4f}" if _has_loss(t) else "")
                    for r, s, v, t in points
                ],
                hoverinfo="text",
            )
        )
    fig.update_xaxes(title="rung", dtick=1)
    fig.update_yaxes(title=metric)
    return fig


def _has_loss(trial: FrozenTrial) -> bool:
    return isinstance(trial.user_attrs.get("validation_loss"), float)


def build_figures(study: optuna.Study, standard: Standard | None = None) -> dict[str, Any]:
    """The report's Plotly figures by name (see :data:`FIGURES`); trials judged by ``standard``
    (default: the study's recorded budget and baseline)."""
    metric = study.user_attrs.get("metric", "value")
    standard = standard or Standard.of(study)
    builders: dict[str, Callable[[], Any]] = {
        "pareto": lambda: _pareto(study, metric, standard),
        "history": lambda: _history(study, metric, standard),
        "importance": lambda: _importance(study, standard),
        "blocks": lambda: _blocks(study, metric, standard),
        "race": lambda: _race(study, metric),
    }
    figures = {}
    for name, build in builders.items():
        try:
            fig = build()
        except (TypeError, ValueError, KeyError, AttributeError) as exc:  # a trial record of the wrong shape
            import plotly.graph_objects as go

            why = f"{type(exc).__name__}: {exc}"[:160]
            fig = _empty(go.Figure(), f"not drawn: a trial's record is not as autopeft writes it ({why})")
        fig.update_layout(title=FIGURES[name], template="plotly_white", height=460, margin={"t": 70})
        figures[name] = fig
    return figures


def method_table(study: optuna.Study, standard: Standard | None = None) -> list[dict[str, Any]]:
    """One row per method, best method first: trials by outcome, its best feasible trial, and its
    median training time."""
    metric = study.user_attrs.get("metric", "value")
    standard = standard or Standard.of(study)
    rows = []
    trials = [t for t in study.get_trials(deepcopy=False) if "method" in t.user_attrs]
    for method in sorted({_method(t) for t in trials}):
        mine = [t for t in trials if _method(t) == method]
        outcomes = Counter(outcome(t) for t in mine)
        feasible = [t for t in feasible_trials(study, standard.budget) if _method(t) == method]
        best = best_trial(study, feasible, standard.budget)
        seconds = [t.user_attrs["train_seconds"] for t in mine if "train_seconds" in t.user_attrs]
        rows.append(
            {
                "method": method,
                "trials": len(mine),
                "complete": outcomes["complete"],
                "pruned": outcomes["pruned"],
                "infeasible": outcomes["infeasible"],
                "failed": outcomes["fail"],
                f"best {metric}": best.values[0] if best and best.values else None,
                "best trial": best.number if best else None,
                "its params": best.user_attrs["trainable_params"] if best else None,
                "median train s": statistics.median(seconds) if seconds else None,
            }
        )
    sign = metric_sign(study)
    return sorted(rows, key=lambda r: (r[f"best {metric}"] is None, -sign * (r[f"best {metric}"] or 0)))


def outcome_table(study: optuna.Study, standard: Standard | None = None) -> list[dict[str, Any]]:
    """Every trial that did not complete within the budget, or learned nothing, and why."""
    standard = standard or Standard.of(study)
    rows = []
    for t in study.get_trials(deepcopy=False):
        why = reason(t, standard)
        if why is not None:
            rows.append(
                {"trial": t.number, "outcome": outcome(t), "method": t.user_attrs.get("method", ""), "reason": why}
            )
    return rows


def _table(rows: list[dict[str, Any]], empty: str) -> str:
    if not rows:
        return f"<p class='empty'>{html.escape(empty)}</p>"

    def cell(v: Any) -> str:
        if v is None:
            return "<td></td>"
        if isinstance(v, float):
            return f"<td class='n'>{v:.4f}</td>" if abs(v) < 1000 else f"<td class='n'>{v:,.0f}</td>"
        if isinstance(v, int):
            return f"<td class='n'>{v:,}</td>"
        return f"<td>{html.escape(str(v))}</td>"

    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(cell(v) for v in r.values()) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2rem; } .meta { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3rem 0.7rem; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; } .empty { color: #777; }
.plot { margin-bottom: 1.5rem; }
"""


def _plotly_script(plotly_js: str) -> str:
    """The page's plotly.js: inlined (4.6 MB, the report opens offline) or loaded from plotly's CDN
    (the report is a few hundred kB, and needs the network to draw)."""
    from plotly.offline import get_plotlyjs, get_plotlyjs_version

    if plotly_js == "cdn":
        return f'<script src="https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js" charset="utf-8"></script>'
    return f"<script>{get_plotlyjs()}</script>"


def write_html(
    study: optuna.Study, path: Path, storage: str = "", standard: Standard | None = None, plotly_js: str = "inline"
) -> Path:
    """Write the report for ``study`` to ``path``: one file; ``plotly_js``: ``"inline"`` (viewable
    offline) or ``"cdn"`` (small, needs the network).

    ``storage`` is shown as given: pass it through :func:`~autopeft.storage.backends.mask_url`."""

    standard = standard or Standard.of(study)
    figures = build_figures(study, standard)
    metric = study.user_attrs.get("metric", "value")
    best = winner(study, budget=standard.budget)
    refit = refit_record(study, best) if best is not None else None
    states = Counter(outcome(t) for t in study.get_trials(deepcopy=False))
    summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    best_line = (
        f"best: trial {best.number}, {best.user_attrs['method']}, {metric} {best.values[0]:.4f} with "
        f"{best.user_attrs['trainable_params']:,} trainable parameters"
        + (
            f"; refit {refit['mean']:.4f} ± {refit['std']:.4f} over {len(refit['seeds'])} seeds"
            + (f", test {refit['test_mean']:.4f} ± {refit['test_std']:.4f}" if "test_mean" in refit else "")
            if refit
            else ""
        )
        if best is not None and best.values
        else "no feasible trial yet"
    )
    plots = "\n".join(
        f"<div class='plot' id='plot-{name}'>"
        + fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{name}", config={"responsive": True})
        + "</div>"
        for name, fig in figures.items()
    )
    budget = standard.budget
    trials = study.get_trials(deepcopy=False)
    baseline_line = (
        f"<br>baseline: {html.escape(standard.describe_baseline())} (a model that learned nothing from the inputs); "
        f"{sum(standard.at_baseline(t) for t in trials)} trials no better"
        if standard.baseline is not None
        else ""
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>autopeft report: {html.escape(study.study_name)}</title>
<style>{_CSS}</style>{_plotly_script(plotly_js)}</head>
<body>
<h1>autopeft study {html.escape(study.study_name)}</h1>
<p class="meta">{html.escape(storage)} · metric {html.escape(metric)} · budget {f"{budget:,}" if budget else "?"}
trainable parameters · {len(trials)} trials ({html.escape(summary)})<br>{html.escape(best_line)}{baseline_line}</p>
{plots}
<h2>Methods</h2>
{_table(method_table(study, standard), "no trials yet")}
<h2>Pruned, infeasible and failed trials, and trials no better than the baseline</h2>
{_table(outcome_table(study, standard), "every trial completed within the budget")}
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def write_pngs(
    study: optuna.Study, directory: Path, standard: Standard | None = None, width: int = 1000, height: int = 460
) -> list[Path]:
    """Write the report's figures as ``<name>.png`` images (kaleido, with a local Chrome or Chromium)."""
    import plotly.io as pio

    figures = build_figures(study, standard)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{name}.png" for name in figures]
    try:
        pio.write_images(list(figures.values()), [str(p) for p in paths], width=width, height=height)
    except Exception as exc:  # kaleido raises its own types for a missing or failing browser
        raise AutopeftError(
            f"--png: could not render images ({first_line(exc)}); kaleido needs Chrome or Chromium: install chromium "
            "(e.g. apt install chromium) or run `plotly_get_chrome`"
        ) from None
    return paths
