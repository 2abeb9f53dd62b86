"""The CBPE estimate's error against the realized accuracy, on the simulator's traffic.

    .venv/bin/python -m tests.benchmarks.quality_estimate            # 2,400 s, default incidents
    .venv/bin/python -m tests.benchmarks.quality_estimate --duration 7200 --seed 3

Runs the simulator (the end-to-end monitors test's scenario by default: 3 campaigns,
`default_incidents`, whose `concept_drift` hits model-0) through the quality operator
in-process (a 600-s label delay: the simulator's labels come within 540 s), and prints,
per classifier and final window, the label-free estimate and the realized accuracy,
then the estimate's mean and maximum absolute error inside and outside the concept drift.
"""

from __future__ import annotations

import argparse
import statistics
from datetime import UTC, datetime

from operators.quality import QualityConfig, QualityOperator
from schemas.decode import Decoder, Rejection
from streams.cli.simulate import Scenario, Simulator, default_incidents
from tests.row_dicts import as_dicts

START_MS = int(datetime(2026, 6, 1, tzinfo=UTC).timestamp() * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=2400)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    # the model incidents of the default schedule (the others need traffic not simulated here)
    models = ("concept_drift", "prediction_shift", "feature_drift", "latency_spike", "error_spike")
    incidents = [i for i in default_incidents(args.duration, campaigns=3) if i.kind in models]
    scenario = Scenario(
        start_ms=START_MS, duration_s=args.duration, campaigns=3, seed=args.seed,
        incidents=incidents, impressions_per_s=0.0, sensors=0,
    )  # fmt: skip
    op = QualityOperator(QualityConfig(label_delay_ms=600_000))
    decoders = {t: Decoder(t) for t in ("inference-logs", "labels")}
    rows = []
    for topic, key, value in Simulator(scenario).messages():
        if topic == "__tick__":
            op.advance(int(value) - 10_000)
            rows += as_dicts(op.collect().rows.get("quality_windows", []))
        elif topic in decoders:
            event = decoders[topic].decode(value, key.encode())
            assert not isinstance(event, Rejection), event
            op.feed(topic, [event])
    op.advance(START_MS + 10**9)
    rows += as_dicts(op.collect().rows.get("quality_windows", []))
    drift = [i for i in incidents if i.kind == "concept_drift"]
    inside: list[float] = []
    outside: list[float] = []
    print(f"{'model':<9} {'window':>7} {'estimate':>9} {'realized':>9} {'error':>7}")
    for r in rows:
        if not r["final"] or r["estimated_accuracy"] is None or r["accuracy"] is None:
            continue
        t0 = (r["window_start"] - START_MS) / 1000
        t1 = t0 + 300
        hit = any(i.target == r["model_id"] and i.start_s < t1 and i.end_s > t0 for i in drift)
        error = r["estimated_accuracy"] - r["accuracy"]
        (inside if hit else outside).append(abs(error))
        mark = "  concept drift" if hit else ""
        print(
            f"{r['model_id']:<9} {t0:>6.0f}s {r['estimated_accuracy']:>9.3f} "
            f"{r['accuracy']:>9.3f} {error:>+7.3f}{mark}"
        )
    for name, errors in (("outside the concept drift", outside), ("inside it", inside)):
        if errors:
            print(
                f"{name}: {len(errors)} windows, mean |error| {statistics.mean(errors):.3f}, "
                f"max {max(errors):.3f}"
            )


if __name__ == "__main__":
    main()
