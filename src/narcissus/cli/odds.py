"""`narcissus odds`: how likely, and how soon, a client retrying a port connects to itself."""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from typing import Any

from narcissus.cli import EXIT_FOUND, EXIT_OK
from narcissus.cli._common import (
    add_json_option,
    console,
    count_arg,
    duration_arg,
    emit_json,
    port_arg,
)
from narcissus.core.allocators import MODELS
from narcissus.core.durations import format_duration
from narcissus.core.odds import DAYS_PER_MONTH, SECONDS_PER_MONTH, Question
from narcissus.core.ports import parse_port_list, parse_port_range
from narcissus.errors import InputError, install_extra
from narcissus.quantify.odds import (
    DEFAULT_TRIALS,
    MAX_TRIALS,
    MIN_TRIALS,
    Estimate,
    estimate,
)

MAX_CLIENTS = 1_000_000
MAX_HOSTS = 100_000_000
MAX_OTHER_CPS = 1e9
MAX_HORIZON = 3650 * 86400.0  # ten years

DESCRIPTION = f"""\
How likely is a client that retries a port where nothing listens to be handed that very port
and connect to itself, and how soon? For each allocator model: the probability of at least one
self-connect within the horizon, the mean, median and 99th-percentile time to the first one,
the mean number of attempts, the expected self-connects per day across the clients, and the
advice. Exact closed forms where they exist; a Monte Carlo (numpy: the `odds` extra,
NARCISSUS_EXTRAS=odds ./scripts/install) otherwise, with its number of trials and 99% intervals.

The model, range and reserved ports default to this host's. Models:
{", ".join(MODELS)}.
Durations take us, ms, s, m, h or d (200ms, 1.5s, 1d); a tight retry loop is about
--interval 30us (one refused loopback connect).

Across a fleet (--fleet HOSTS, with --clients-per-host N): how many self-connects a month
across HOSTS hosts alike, with the same models: each host's clients retry the port for
--retrying a month (default: the whole month, as if the server never came back; an outage of
10 s a day is --retrying 5m), hosts are independent. Also the chance of at least one in the
fleet within the month and how many hosts that hits.

examples:
  narcissus odds --port 50000 --interval 200ms
  narcissus odds --fleet 2000 --clients-per-host 4 --port 45000 --retrying 5m --os linux

exit status: 0 the port cannot be hit within the horizon, 1 it can, 2 bad input,
3 a Monte Carlo is needed but numpy is missing.
"""


def _model_arg(text: str) -> str:
    name = text.strip().lower()
    if name not in MODELS:
        raise argparse.ArgumentTypeError(f"unknown model {text!r}; choose from {', '.join(MODELS)}")
    return name


def _range_arg(text: str) -> object:
    try:
        return parse_port_range(text, what="--range")
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _reserved_arg(text: str) -> object:
    try:
        return parse_port_list(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}; write ports like 8080,9000-9010") from exc


def _rate_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (0 <= value <= MAX_OTHER_CPS):  # NaN fails both comparisons
        raise argparse.ArgumentTypeError(
            f"--other-cps takes connects per second from 0 to {MAX_OTHER_CPS:,.0f}, got {text!r}"
        )
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port",
        type=port_arg,
        metavar="P",
        help="the port clients retry (default: one in the middle of the range, of the parity "
        "Linux tries first)",
    )
    parser.add_argument(
        "--os",
        dest="models",
        type=_model_arg,
        action="append",
        metavar="NAME",
        help="allocator model (repeatable; one curve each with --plot); default: this host's",
    )
    parser.add_argument(
        "--range",
        dest="port_range",
        type=_range_arg,
        metavar="LOW-HIGH",
        help="the ephemeral port range (default: this host's, or the model OS's default)",
    )
    parser.add_argument(
        "--reserved",
        type=_reserved_arg,
        metavar="LIST",
        help="reserved ports, e.g. 8080,9000-9010 (default: this host's)",
    )
    parser.add_argument(
        "--interval",
        type=duration_arg("--interval", minimum=1e-6, maximum=86400.0),
        default="200ms",  # a string default goes through `type`, as if typed
        metavar="DURATION",
        help="time between one client's attempts (default: 200ms)",
    )
    parser.add_argument(
        "--clients",
        "--clients-per-host",
        dest="clients",
        type=count_arg("--clients", maximum=MAX_CLIENTS),
        default=1,
        metavar="N",
        help="clients on a host retrying the same port at once (default: 1)",
    )
    parser.add_argument(
        "--fleet",
        dest="hosts",
        type=count_arg("--fleet", maximum=MAX_HOSTS),
        metavar="HOSTS",
        help="answer for HOSTS hosts alike too: self-connects a month across them",
    )
    parser.add_argument(
        "--retrying",
        type=duration_arg("--retrying", maximum=SECONDS_PER_MONTH),
        metavar="DURATION",
        help="with --fleet: how long a month each host's clients retry the port, e.g. the "
        "server's downtime (default: the whole month, 30d)",
    )
    parser.add_argument(
        "--other-cps",
        type=_rate_arg,
        default=0.0,
        metavar="RATE",
        help="connects per second made elsewhere on the host; they move global counters "
        "(default: 0)",
    )
    parser.add_argument(
        "--horizon",
        type=duration_arg("--horizon", maximum=MAX_HORIZON),
        default="1d",
        metavar="DURATION",
        help="the time asked about (default: 1d)",
    )
    parser.add_argument(
        "--ipv6", action="store_true", help="the clients connect over IPv6 (matters on macOS)"
    )
    parser.add_argument(
        "--trials",
        type=count_arg("--trials", minimum=MIN_TRIALS, maximum=MAX_TRIALS),
        default=DEFAULT_TRIALS,
        metavar="N",
        help=f"Monte Carlo trials, {MIN_TRIALS:,} to {MAX_TRIALS:,} (default: {DEFAULT_TRIALS:,})",
    )
    parser.add_argument(
        "--seed",
        type=count_arg("--seed", minimum=0, maximum=2**32 - 1),
        metavar="N",
        help="Monte Carlo seed (0 to 4294967295), for reproducible output",
    )
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="write the probability of a self-connect over time, one curve per model",
    )
    add_json_option(parser)


def run(options: argparse.Namespace) -> int:
    if options.plot and not options.plot.lower().endswith(".png"):
        raise InputError(
            f"--plot writes a PNG: give a file name ending in .png, not {options.plot}"
        )
    if options.retrying is not None and options.hosts is None:
        raise InputError("--retrying describes a fleet: give --fleet HOSTS too")
    models: list[str | None] = list(dict.fromkeys(options.models or [None]))
    question = Question(
        port=options.port,
        interval=options.interval,
        clients=options.clients,
        horizon=options.horizon,
        port_range=options.port_range,
        reserved=options.reserved,
        other_cps=options.other_cps,
        ipv6=options.ipv6,
        hosts=options.hosts or 1,
        retrying=options.retrying,
    )
    estimates: list[Estimate] = []
    for model in models:
        result = _with_progress(options, replace(question, model=model))
        question = replace(question, port=result.scenario.port)  # every model: the same port
        estimates.append(result)
    if options.plot:
        plot(estimates, options.plot)
    fleet = options.hosts is not None
    if options.as_json:
        first = estimate_json(estimates[0], fleet=fleet)
        emit_json({**first, "estimates": [estimate_json(e, fleet=fleet) for e in estimates]})
    else:
        _render(estimates, options.plot, fleet=fleet)
    return EXIT_FOUND if any(e.p_within_horizon > 0 for e in estimates) else EXIT_OK


def _with_progress(options: argparse.Namespace, question: Question) -> Estimate:
    if not sys.stderr.isatty():
        return estimate(question, trials=options.trials, seed=options.seed)
    from rich.progress import Progress

    with Progress(console=console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"Monte Carlo {question.model or 'this host'}", total=1.0)
        return estimate(
            question,
            trials=options.trials,
            seed=options.seed,
            progress=lambda share: bar.update(task, completed=share),
        )


# ---------------------------------------------------------------- JSON


def _number(value: float) -> float | None:
    return None if math.isinf(value) or math.isnan(value) else value


def _pair(pair: tuple[float, float] | None) -> list[float] | None:
    return None if pair is None else [pair[0], pair[1]]


def fleet_json(result: Estimate) -> dict[str, Any]:
    fleet = result.fleet
    return {
        "hosts": fleet.hosts,
        "clients_per_host": result.scenario.clients,
        "retrying_seconds_per_month": fleet.retrying,
        "days_per_month": DAYS_PER_MONTH,
        "per_month": fleet.per_month,
        "per_day": fleet.per_day,
        "per_host_per_month": fleet.per_host,
        "p_host_per_month": fleet.p_host,
        "p_any_per_month": fleet.p_any,
        "hosts_hit_per_month": fleet.hosts_hit,
    }


def estimate_json(result: Estimate, *, fleet: bool = False) -> dict[str, Any]:
    scenario = result.scenario
    extra = {"fleet": fleet_json(result)} if fleet else {}
    return {
        "model": scenario.model.name,
        "model_label": scenario.model.label,
        "port": scenario.port,
        "ephemeral_range": scenario.port_range.as_list(),
        "reserved_ports": list(scenario.reserved),
        "reserved_ports_text": str(scenario.reserved),
        "from_host": result.from_host,
        "range_from": result.range_from,
        "interval_seconds": scenario.interval,
        "clients": scenario.clients,
        "other_cps": scenario.other_cps,
        "ipv6": scenario.ipv6,
        "horizon_seconds": scenario.horizon,
        "exposure": result.exposure.value,
        "reason": result.reason,
        "method": result.method,
        "trials": result.trials,
        "censored_trials": result.censored,
        "p_within_horizon": result.p_within_horizon,
        "p_within_horizon_interval": _pair(result.p_interval),
        "mean_attempts": _number(result.mean_attempts),
        "mean_attempts_interval": _pair(result.mean_interval),
        "median_attempts": _number(result.median_attempts),
        "p99_attempts": _number(result.p99_attempts),
        "mean_seconds": _number(result.mean_seconds),
        "median_seconds": _number(result.median_seconds),
        "p99_seconds": _number(result.p99_seconds),
        "per_day": result.per_day,
        "advice": result.advice,
        **extra,
    }


# ---------------------------------------------------------------- text


def _percent(p: float) -> str:
    if p == 0:
        return "0%"
    if p == 1:
        return "100%"
    if p < 0.001:
        return f"{p:.1e}"
    return f"{100 * p:.3g}%"


def _count(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:,.0f}"


def _render_fleet(out: Any, estimates: list[Estimate]) -> None:
    first = estimates[0]
    fleet = first.fleet
    whole = fleet.retrying >= SECONDS_PER_MONTH
    when = "all month" if whole else f"{format_duration(fleet.retrying)} a month"
    clients = "1 client" if first.scenario.clients == 1 else f"{first.scenario.clients} clients"
    out.print(
        f"\n[bold]fleet[/]: {fleet.hosts:,} hosts, {clients} each retrying port "
        f"{first.scenario.port} every {format_duration(first.scenario.interval)}, {when}"
    )
    for result in estimates:
        answer = result.fleet
        out.print(
            f"  {result.scenario.model.name}: {answer.per_month:,.3g} self-connects a month "
            f"across the fleet ({answer.per_day:,.3g} a day); P(at least one a month) "
            f"{_percent(answer.p_any)}; hosts hit a month {answer.hosts_hit:,.3g}",
            markup=False,
        )


def _render(estimates: list[Estimate], plot_file: str | None, *, fleet: bool = False) -> None:
    from rich.table import Table

    out = console()
    first = estimates[0].scenario
    clients = f"{first.clients} clients" if first.clients > 1 else "1 client"
    other = f", {first.other_cps:g} other connects/s" if first.other_cps else ""
    out.print(
        f"[bold]narcissus odds[/]: port {first.port}, {clients} retrying every "
        f"{format_duration(first.interval)}{other}; horizon {format_duration(first.horizon)}"
    )
    horizon = format_duration(first.horizon)
    table = Table(box=None, pad_edge=False)
    for header in ("MODEL", f"P(<={horizon})", "MEAN", "MEDIAN", "P99", "ATTEMPTS", "PER DAY"):
        table.add_column(header, justify="left" if header == "MODEL" else "right", no_wrap=True)
    table.add_column("METHOD", no_wrap=True)
    for result in estimates:
        table.add_row(
            result.scenario.model.name,
            _percent(result.p_within_horizon),
            format_duration(result.mean_seconds),
            format_duration(result.median_seconds),
            format_duration(result.p99_seconds),
            _count(result.mean_attempts),
            f"{result.per_day:,.3g}",
            result.method,
        )
    out.print(table)
    for result in estimates:
        _render_details(out, result)
    if fleet:
        _render_fleet(out, estimates)
    if plot_file:
        out.print(f"\nplot written to {plot_file}", markup=False)


def _render_details(out: Any, result: Estimate) -> None:
    scenario = result.scenario
    source = {
        "given": "as given",
        "host": "from this host",
        "default": f"from the {scenario.model.label} default",
    }[result.range_from]
    out.print(
        f"\n[bold]{scenario.model.name}[/] ({scenario.model.label}): range {scenario.port_range}"
        f" {source}, reserved {scenario.reserved or 'none'}"
    )
    out.print(f"  why: {result.reason}", markup=False)
    if result.method == "monte carlo":
        p_low, p_high = result.p_interval or (0.0, 0.0)
        m_low, m_high = result.mean_interval or (0.0, 0.0)
        out.print(
            f"  Monte Carlo: {result.trials:,} trials; 99% intervals: P {_percent(p_low)}"
            f"-{_percent(p_high)}, mean {m_low:,.0f}-{m_high:,.0f} attempts",
            markup=False,
        )
        if result.censored:
            out.print(
                f"  note: {result.censored:,} trials had no self-connect when the simulation "
                "stopped: the mean is a lower bound",
                markup=False,
            )
    if result.possible:
        out.print(
            f"  expected {result.per_day:,.3g} self-connects per day across the clients, "
            "if they kept retrying",
            markup=False,
        )
    out.print(f"  advice: {result.advice}", markup=False)


# ---------------------------------------------------------------- the plot


# Time axis ticks people read at a glance: 1ms, 10ms, 100ms, 1s, 10s, 1m, 10m, 1h, 6h, 1d, 1w, ...
TICKS = (
    1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0, 6 * 3600.0, 86400.0,
    7 * 86400.0, 30 * 86400.0, 365 * 86400.0,
)  # fmt: skip


def plot(estimates: list[Estimate], path: str) -> None:
    """A PNG of P(at least one self-connect by t), one curve per model, the horizon marked."""
    try:
        import matplotlib
    except ImportError as exc:
        from narcissus.errors import UnsupportedError

        raise UnsupportedError(f"--plot needs matplotlib: {install_extra('odds')}") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    first = estimates[0].scenario
    horizon = first.horizon
    finite = [e.p99_seconds for e in estimates if math.isfinite(e.p99_seconds)]
    start = min(e.scenario.spacing for e in estimates)
    end = max([horizon * 3, *(value * 3 for value in finite)])
    count = 400
    times = [start * (end / start) ** (i / (count - 1)) for i in range(count)]

    figure, axes = plt.subplots(figsize=(9, 5.2), dpi=120)
    for result in estimates:
        values = [100 * result.probability_within(t) for t in times]
        label = f"{result.model.name} ({result.model.label})"
        if result.possible:
            label += f": mean {format_duration(result.mean_seconds)}"
        else:
            label += ": never"
        axes.plot(times, values, linewidth=2, label=label)
    axes.axvline(horizon, color="black", linestyle="--", linewidth=1.2)
    axes.text(
        horizon,
        50,
        f" horizon {format_duration(horizon)}",
        rotation=90,
        va="center",
        ha="right",
    )
    axes.set_xscale("log")
    ticks = [value for value in TICKS if start <= value <= end]
    axes.xaxis.set_major_locator(FixedLocator(ticks))
    axes.xaxis.set_minor_locator(NullLocator())
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _pos: format_duration(value)))
    axes.set_xlim(start, end)
    axes.set_ylim(-2, 102)
    axes.set_xlabel("time since the first attempt (log scale)")
    axes.set_ylabel("P(at least one self-connect) [%]")
    clients = f"{first.clients} clients" if first.clients > 1 else "1 client"
    axes.set_title(
        f"Self-connect odds: port {first.port}, {clients} retrying every "
        f"{format_duration(first.interval)}"
    )
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(loc="upper left", fontsize=9)
    figure.tight_layout()
    try:
        figure.savefig(path)
    except OSError as exc:
        raise InputError(f"cannot write the plot to {path}: {exc.strerror or exc}") from exc
    finally:
        plt.close(figure)
