"""Is the `linux` allocator model right? Measure the real kernel and compare.

Inside a private network namespace with the default ephemeral range, an unbound client
connects in a tight loop to 127.0.0.1:P (nothing listens) until the kernel hands it P as its
source port, for `--runs` runs at random even ports P. The measured attempts to the first
natural self-connect are compared, in the same run, with the `linux` model (Monte Carlo at the
measured time per attempt, which sets how many attempts share one 10 s key):

  mean       measured mean within 10% of the model's            (the anchor: the model)
  KS         two-sample Kolmogorov-Smirnov test, measured vs simulated, not rejected at 1%
  odd port   no self-connect in 100,000 attempts at an odd port (the model says never)
  speed      the Monte Carlo simulates >= 10 million attempts per second

Usage: python bench/calibrate.py [--runs N] [--odd-attempts N] [--trials N] [--seed S]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import in_private_netns, verdict

RUN_CAP_ATTEMPTS = 400_000  # ~30x the mean: a run that needs more is a finding in itself
RUN_CAP_SECONDS = 30.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=400, help="measured runs (at least 60)")
    parser.add_argument("--odd-attempts", type=int, default=100_000)
    parser.add_argument("--trials", type=int, default=20_000, help="simulated draws")
    parser.add_argument("--seed", type=int, default=None)
    options = parser.parse_args()
    if options.runs < 60:
        parser.error("--runs must be at least 60")
    in_private_netns(__file__, sys.argv[1:])

    from scipy.stats import ks_2samp

    import narcissus.quantify.odds
    from narcissus.core import montecarlo
    from narcissus.core.odds import Question, locate, plan_for
    from narcissus.diagnose.ports import ephemeral_ports
    from narcissus.repro.natural import attempts_to_self_connect

    settings = ephemeral_ports()
    port_range = settings.range
    print(f"namespace range {port_range}, reserved {settings.reserved or 'none'}", file=sys.stderr)
    chooser = random.Random(options.seed)

    measured: list[int] = []
    seconds = 0.0
    misses = 0
    for run in range(options.runs):
        port = chooser.randrange(port_range.low + (port_range.low % 2), port_range.high, 2)
        probe = attempts_to_self_connect(
            port, max_attempts=RUN_CAP_ATTEMPTS, timeout=RUN_CAP_SECONDS
        )
        seconds += probe.seconds
        if probe.self_connected:
            measured.append(probe.attempts)
        else:
            misses += 1
        if (run + 1) % 50 == 0:
            print(f"  {run + 1}/{options.runs} runs", file=sys.stderr)
    attempts_total = sum(measured) + misses * RUN_CAP_ATTEMPTS
    spacing = seconds / attempts_total
    print(f"measured {spacing * 1e6:.1f} us per attempt", file=sys.stderr)

    model = narcissus.estimate_odds(
        port_range.low + 2 * (len(port_range) // 4),
        model="linux",
        interval=spacing,
        port_range=port_range,
        reserved=settings.reserved,
        method="simulate",
        trials=options.trials,
        seed=options.seed,
    )
    simulated = list(getattr(model.attempts, "samples", []))

    odd_port = port_range.low + 2 * (len(port_range) // 4) + 1
    odd = attempts_to_self_connect(
        odd_port, max_attempts=options.odd_attempts, timeout=RUN_CAP_SECONDS * 4
    )
    odd_model = narcissus.estimate_odds(odd_port, model="linux", interval=spacing)

    # Monte Carlo speed: the default scenario (200 ms) and the tight loop, timed here.
    speeds = []
    for interval in (0.2, spacing):
        question = Question(model="linux", interval=interval, port_range=port_range)
        scenario, _ = narcissus.quantify.odds.scenario(question)
        plan = plan_for(scenario, locate(scenario))
        start = time.perf_counter()
        result = montecarlo.simulate(
            plan, trials=20_000, max_attempts=10**9, budget=10**9, seed=options.seed
        )
        speeds.append((interval, result.simulated / (time.perf_counter() - start)))

    ks = ks_2samp(measured, simulated)
    mean_measured = statistics.fmean(measured)
    ratio = mean_measured / model.mean_attempts
    low, high = model.mean_interval or (model.mean_attempts, model.mean_attempts)

    def quantile(values: list[int], q: float) -> float:
        ordered = sorted(values)
        return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])

    print(f"\nattempts to the first natural self-connect (even ports, range {port_range}):")
    print(f"  {'':10s} {'runs':>7s} {'mean':>9s} {'median':>9s} {'p90':>9s} {'p99':>9s}")
    for name, values in (("measured", measured), ("model", simulated)):
        print(
            f"  {name:10s} {len(values):7,d} {statistics.fmean(values):9,.0f} "
            f"{quantile(values, 0.5):9,.0f} {quantile(values, 0.9):9,.0f} "
            f"{quantile(values, 0.99):9,.0f}"
        )
    print(f"  runs without a self-connect within {RUN_CAP_ATTEMPTS:,} attempts: {misses}")
    print(f"  model mean 99% interval {low:,.0f}-{high:,.0f} ({model.trials:,} simulated draws)")

    mean_ok = abs(ratio - 1) <= 0.10 and misses == 0
    ks_ok = ks.pvalue >= 0.01
    odd_ok = not odd.self_connected and odd.attempts >= options.odd_attempts
    odd_model_ok = odd_model.p_within_horizon == 0
    speed_ok = all(rate >= 10e6 for _interval, rate in speeds)
    print(f"\n  mean measured / model   {ratio:.3f}  goal 0.90-1.10       {verdict(mean_ok)}")
    print(
        f"  KS two-sample           D={ks.statistic:.3f} p={ks.pvalue:.3f}  goal p >= 0.01  "
        f"{verdict(ks_ok)}"
    )
    print(
        f"  odd port {odd_port}         {odd.attempts:,} attempts, "
        f"{'a self-connect' if odd.self_connected else 'no self-connect'} "
        f"(model: {odd_model.exposure.value})  {verdict(odd_ok and odd_model_ok)}"
    )
    for interval, rate in speeds:
        label = "200ms" if interval == 0.2 else f"{interval * 1e6:.0f}us"
        print(
            f"  Monte Carlo speed ({label:>5s})  {rate / 1e6:.1f} M attempts/s  goal >= 10  "
            f"{verdict(rate >= 10e6)}"
        )
    return 0 if mean_ok and ks_ok and odd_ok and odd_model_ok and speed_ok else 1


if __name__ == "__main__":
    sys.exit(main())
