"""The quality gate save_predictions runs before anything replaces the latest predictions: five checks of this
run's predictions and input against the reference the model recorded at training (its `quality_reference` in
metadata.json, handed on by predict) and against the previous latest predictions. The figures are gathered in
one streaming pass (`Profile`); the checks are pure functions of them. docs/quality-gate.md gives the reasons
for every threshold."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchpred_steps.errors import StepError

if TYPE_CHECKING:
    import pandas as pd

# The key of the reference in the model's metadata.json and in predict's _metadata.json.
REFERENCE_KEY = "quality_reference"
QUALITY_FILE = "quality.json"
PICTURE_FILE = "distribution.svg"
# Check names, in the order they are run and reported; an error names the first that failed.
COUNT, FINITE, RANGE, MISSING, DRIFT = (
    "prediction count",
    "non-finite predictions",
    "prediction range",
    "missing values",
    "prediction drift",
)
CHECKS = (COUNT, FINITE, RANGE, MISSING, DRIFT)
# A feature's missing share fails only when it is also significant: the chance of seeing that many missing
# values if the true share were training's plus the tolerance is below this (a Chernoff bound, so a
# 10-row sample does not fail on chance). Not a setting: it is about sampling noise, not about the data.
MISSING_SIGNIFICANCE = 1e-3
# The share an empty bin counts as in the PSI (the usual floor; without one an empty bin makes it infinite).
PSI_FLOOR = 1e-4


@dataclass(frozen=True)
class GateSettings:
    """The thresholds (settings GATE_*, passed by the pipeline) and the run's accept_drift parameter."""

    range_margin: float = 0.5
    drift_psi: float = 0.25
    drift_min_rows: int = 300
    missing_tolerance: float = 0.2
    accept_drift: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "range_margin": self.range_margin,
            "drift_psi": self.drift_psi,
            "drift_min_rows": self.drift_min_rows,
            "missing_tolerance": self.missing_tolerance,
            "accept_drift": self.accept_drift,
        }


@dataclass(frozen=True)
class Reference:
    """What the model recorded at training (see pipeline_def/local/model.py quality_reference)."""

    target_min: float
    target_max: float
    missing_share: dict[str, float]
    edges: list[float]
    shares: list[float]
    rows: int

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> Reference | None:
        """The reference predict handed on, None when the model recorded none; StepError when malformed."""
        raw = metadata.get(REFERENCE_KEY)
        if raw is None:
            return None
        try:
            predictions = raw["predictions"]
            reference = cls(
                target_min=float(raw["target_min"]),
                target_max=float(raw["target_max"]),
                missing_share={str(k): float(v) for k, v in raw["missing_share"].items()},
                edges=[float(e) for e in predictions["edges"]],
                shares=[float(s) for s in predictions["shares"]],
                rows=int(predictions["rows"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise StepError(
                f"the model's {REFERENCE_KEY} is malformed: {type(error).__name__}: {error}"
            ) from None
        if len(reference.shares) != len(reference.edges) + 1 or reference.edges != sorted(reference.edges):
            raise StepError(
                f"the model's {REFERENCE_KEY} has {len(reference.edges)} edges and "
                f"{len(reference.shares)} shares; expected ascending edges and one share more"
            )
        return reference

    def bounds(self, margin: float) -> tuple[float, float]:
        """The plausible range: the training target's range widened by `margin` on a ratio scale (prices are
        positive and spread multiplicatively: the same margin below and above)."""
        return self.target_min / (1 + margin), self.target_max * (1 + margin)


@dataclass
class Profile:
    """What one pass over the predictions learns: counts, the range, bin counts and missing values."""

    edges: list[float]
    low: float
    high: float
    features: list[str]
    rows: int = 0
    non_finite: int = 0
    below: int = 0
    above: int = 0
    minimum: float = math.inf
    maximum: float = -math.inf
    bins: list[int] = field(default_factory=list)
    missing: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bins = self.bins or [0] * (len(self.edges) + 1)
        self.missing = self.missing or {name: 0 for name in self.features}

    def add(self, frame: pd.DataFrame, prediction_column: str) -> None:
        """Count one batch of predicted rows."""
        import numpy as np
        import pandas as pd

        values = pd.to_numeric(frame[prediction_column], errors="coerce").to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        self.rows += len(values)
        self.non_finite += len(values) - len(finite)
        if len(finite):
            self.minimum = min(self.minimum, float(finite.min()))
            self.maximum = max(self.maximum, float(finite.max()))
            self.below += int((finite < self.low).sum())
            self.above += int((finite > self.high).sum())
            counts = np.bincount(np.searchsorted(self.edges, finite, side="right"), minlength=len(self.bins))
            self.bins = [a + int(b) for a, b in zip(self.bins, counts, strict=True)]
        for name in self.features:
            # a feature the input lacks altogether is missing in every row (predict would have refused it)
            self.missing[name] += int(frame[name].isna().sum()) if name in frame.columns else len(frame)

    @property
    def finite_rows(self) -> int:
        return self.rows - self.non_finite


@dataclass(frozen=True)
class Check:
    """One check's outcome: `status` passed, failed, skipped (not applicable, with why) or accepted (failed,
    and the run's accept_drift let it through)."""

    name: str
    status: str
    message: str
    figures: dict[str, Any]

    @property
    def blocks(self) -> bool:
        return self.status == "failed"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "message": self.message, "figures": self.figures}


@dataclass(frozen=True)
class Distribution:
    """A distribution of predictions over the reference's bins: where it comes from, how many rows."""

    source: str
    rows: int
    shares: list[float]


@dataclass(frozen=True)
class Verdict:
    checks: list[Check]
    this_run: Distribution
    reference: Distribution | None
    edges: list[float]

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if check.blocks]

    @property
    def passed(self) -> bool:
        return not self.failed

    @property
    def drift_accepted(self) -> bool:
        return any(check.status == "accepted" for check in self.checks)

    @property
    def word(self) -> str:
        """`passed`, `passed-drift-accepted` or `failed`: the gate's one word, as run tags carry it."""
        if not self.passed:
            return "failed"
        return "passed-drift-accepted" if self.drift_accepted else "passed"

    def line(self) -> str:
        """The gate's verdict in one line: the first failed check with its figures (and the names of the
        others that failed), or what passed."""
        failed = self.failed
        if failed:
            others = f" (also failed: {', '.join(c.name for c in failed[1:])})" if failed[1:] else ""
            return f"quality gate failed: {failed[0].name}: {failed[0].message}{others}"
        if self.drift_accepted:
            drift = next(c for c in self.checks if c.status == "accepted")
            return f"quality gate passed with drift accepted (accept_drift=true): {drift.message}"
        return f"quality gate passed: {len([c for c in self.checks if c.status == 'passed'])} checks passed"


# --- the checks --------------------------------------------------------------------------------------------


def check_count(profile: Profile, fetched_rows: int | None) -> Check:
    """Every input row has exactly one prediction: as many predicted rows as fetch_data fetched."""
    figures = {"predicted_rows": profile.rows, "input_rows": fetched_rows}
    if fetched_rows is None:
        return Check(COUNT, "failed", f"{_n(profile.rows)} predictions, input row count unknown "
                     "(fetch_data recorded no fetched_rows)", figures)  # fmt: skip
    if profile.rows != fetched_rows:
        return Check(COUNT, "failed", f"{_n(profile.rows)} predictions for {_n(fetched_rows)} input rows",
                     figures)  # fmt: skip
    return Check(
        COUNT, "passed", f"{_n(profile.rows)} predictions for {_n(fetched_rows)} input rows", figures
    )


def check_finite(profile: Profile) -> Check:
    figures = {"non_finite": profile.non_finite, "rows": profile.rows}
    message = f"{_n(profile.non_finite)} of {_n(profile.rows)} missing, NaN or infinite"
    return Check(FINITE, "failed" if profile.non_finite else "passed", message, figures)


def check_range(profile: Profile, reference: Reference | None, margin: float) -> Check:
    if reference is None:
        return _no_reference(RANGE)
    low, high = reference.bounds(margin)
    figures = {
        "below": profile.below,
        "above": profile.above,
        "rows": profile.rows,
        "low": round(low, 2),
        "high": round(high, 2),
        "min_predicted": None if profile.finite_rows == 0 else profile.minimum,
        "max_predicted": None if profile.finite_rows == 0 else profile.maximum,
        "training_min": reference.target_min,
        "training_max": reference.target_max,
        "margin": margin,
    }
    parts = []
    if profile.above:
        parts.append(f"{_n(profile.above)} of {_n(profile.rows)} above {_n(high)} "
                     f"(max seen in training {_n(reference.target_max)})")  # fmt: skip
    if profile.below:
        parts.append(f"{_n(profile.below)} of {_n(profile.rows)} below {_n(low)} "
                     f"(min seen in training {_n(reference.target_min)})")  # fmt: skip
    if parts:
        return Check(RANGE, "failed", "; ".join(parts), figures)
    seen = f"{_n(profile.minimum)} to {_n(profile.maximum)}" if profile.finite_rows else "no finite value"
    return Check(RANGE, "passed", f"{seen}, inside {_n(low)} to {_n(high)}", figures)


def missing_is_significant(missing: int, rows: int, allowed_share: float) -> bool:
    """Whether `missing` of `rows` is more than chance would give if the true share were `allowed_share`: the
    Chernoff bound exp(-rows * KL(observed || allowed)) on that chance is below MISSING_SIGNIFICANCE."""
    if rows == 0:
        return False
    observed = missing / rows
    if observed <= allowed_share:
        return False
    if allowed_share <= 0:
        return True
    if allowed_share >= 1:
        return False
    kl = observed * math.log(observed / allowed_share)
    if observed < 1:
        kl += (1 - observed) * math.log((1 - observed) / (1 - allowed_share))
    return math.exp(-rows * kl) < MISSING_SIGNIFICANCE


def check_missing(profile: Profile, reference: Reference | None, tolerance: float) -> Check:
    """Each model feature's share of missing values in the input against training's plus `tolerance`."""
    if reference is None:
        return _no_reference(MISSING)
    worse = []
    for name in profile.features:
        trained = reference.missing_share.get(name, 0.0)
        count = profile.missing.get(name, 0)
        if missing_is_significant(count, profile.rows, min(1.0, trained + tolerance)):
            worse.append((name, count, trained))
    figures = {
        "rows": profile.rows,
        "tolerance": tolerance,
        "features": {
            name: {"missing": count, "share": _share(count, profile.rows), "training_share": trained}
            for name, count, trained in worse
        },
    }
    if worse:
        shown = "; ".join(
            f"{name} {_n(count)} of {_n(profile.rows)} rows missing ({_pct(count / profile.rows)}, training "
            f"{_pct(trained)} + tolerance {_pct(tolerance)})"
            for name, count, trained in worse[:3]
        )
        more = f" and {len(worse) - 3} more features" if len(worse) > 3 else ""
        return Check(MISSING, "failed", shown + more, figures)
    return Check(MISSING, "passed", f"{len(profile.features)} features within training's share + "
                 f"{_pct(tolerance)}", figures)  # fmt: skip


def psi(current: Sequence[float], reference: Sequence[float], floor: float = PSI_FLOOR) -> float:
    """The population stability index of two distributions over the same bins: sum (c - r) * ln(c / r),
    each share floored at `floor`."""
    total = 0.0
    for c, r in zip(current, reference, strict=True):
        c, r = max(c, floor), max(r, floor)
        total += (c - r) * math.log(c / r)
    return total


def check_drift(
    profile: Profile, reference: Distribution | None, settings: GateSettings, why_no_reference: str = ""
) -> Check:
    figures: dict[str, Any] = {"rows": profile.finite_rows, "threshold": settings.drift_psi,
                               "min_rows": settings.drift_min_rows}  # fmt: skip
    if profile.finite_rows < settings.drift_min_rows:
        return Check(DRIFT, "skipped", f"{_n(profile.finite_rows)} rows, fewer than the "
                     f"{_n(settings.drift_min_rows)} a distribution needs", figures)  # fmt: skip
    if reference is None:
        return Check(DRIFT, "skipped", why_no_reference or "no reference distribution", figures)
    value = psi(shares(profile.bins), reference.shares)
    figures |= {"psi": round(value, 4), "reference": reference.source, "reference_rows": reference.rows}
    message = (f"PSI {value:.3f} against {reference.source} ({_n(reference.rows)} rows), "
               f"threshold {settings.drift_psi:g}")  # fmt: skip
    if value <= settings.drift_psi:
        return Check(DRIFT, "passed", message, figures)
    return Check(DRIFT, "accepted" if settings.accept_drift else "failed", message, figures)


def _no_reference(name: str) -> Check:
    return Check(name, "failed", "the model records no quality_reference (retrain it: python -m pipeline_def "
                 "train, or add the reference to its metadata.json)", {})  # fmt: skip


# --- the whole gate ----------------------------------------------------------------------------------------


def profile_batches(
    batches: Iterable[pd.DataFrame], prediction_column: str, reference: Reference | None, margin: float
) -> Profile:
    """One pass over the predicted rows. Without a reference there are no bins, bounds or features: the
    checks that need them fail anyway."""
    if reference is None:
        profile = Profile(edges=[], low=-math.inf, high=math.inf, features=[])
    else:
        low, high = reference.bounds(margin)
        profile = Profile(reference.edges, low, high, sorted(reference.missing_share))
    for batch in batches:
        profile.add(batch, prediction_column)
    return profile


def shares(counts: Sequence[int]) -> list[float]:
    total = sum(counts)
    return [count / total if total else 0.0 for count in counts]


def drift_reference(
    previous: Distribution | None, reference: Reference | None, min_rows: int
) -> tuple[Distribution | None, str]:
    """The distribution this run is compared with: the previous latest predictions when they hold at least
    `min_rows`, else the training rows' predictions the model recorded; and, when there is none, why."""
    if previous is not None and previous.rows >= min_rows:
        return previous, ""
    if reference is None:
        return None, "the model records no reference distribution"
    return Distribution("the training rows' predictions", reference.rows, reference.shares), ""


def previous_distribution(
    latest_csv: Path, prediction_column: str, reference: Reference | None, run_id: str | None
) -> Distribution | None:
    """The previous latest predictions over the reference's bins (None when there are none to read)."""
    import numpy as np
    import pandas as pd

    if reference is None or not latest_csv.is_file():
        return None
    try:
        column = pd.read_csv(latest_csv, usecols=[prediction_column])[prediction_column]
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None  # unreadable or another shape: compared with training instead, said in the report
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    counts = np.bincount(
        np.searchsorted(reference.edges, values, side="right"), minlength=len(reference.shares)
    )
    source = (
        f"the previous latest predictions (run {run_id})" if run_id else "the previous latest predictions"
    )
    return Distribution(source, len(values), shares([int(c) for c in counts]))


def evaluate(
    profile: Profile,
    reference: Reference | None,
    settings: GateSettings,
    fetched_rows: int | None,
    previous: Distribution | None,
) -> Verdict:
    """Every check, in CHECKS order."""
    compared, why = drift_reference(previous, reference, settings.drift_min_rows)
    checks = [
        check_count(profile, fetched_rows),
        check_finite(profile),
        check_range(profile, reference, settings.range_margin),
        check_missing(profile, reference, settings.missing_tolerance),
        check_drift(profile, compared, settings, why),
    ]
    this_run = Distribution("this run's predictions", profile.finite_rows, shares(profile.bins))
    return Verdict(checks, this_run, compared, list(profile.edges))


def report(verdict: Verdict, settings: GateSettings, *, run_id: str, metadata: dict[str, Any],
           created_at: str, picture: str | None) -> dict[str, Any]:  # fmt: skip
    """quality.json: the verdict, every check with its figures, the distributions and the settings."""
    failed = verdict.failed
    return {
        "run_id": run_id,
        "verdict": verdict.word,
        "line": verdict.line(),
        "failed_check": failed[0].name if failed else None,
        "accept_drift": settings.accept_drift,
        "drift_accepted": verdict.drift_accepted,
        "model_name": metadata.get("model_name"),
        "model_version": metadata.get("model_version"),
        "created_at": created_at,
        "settings": settings.to_dict(),
        "checks": [check.to_dict() for check in verdict.checks],
        "distribution": {
            "edges": verdict.edges,
            "this_run": {
                "source": verdict.this_run.source,
                "rows": verdict.this_run.rows,
                "shares": [round(s, 6) for s in verdict.this_run.shares],
            },  # fmt: skip
            "reference": None
            if verdict.reference is None
            else {
                "source": verdict.reference.source,
                "rows": verdict.reference.rows,
                "shares": [round(s, 6) for s in verdict.reference.shares],
            },  # fmt: skip
            "picture": picture,
        },
    }


def _n(value: float) -> str:
    """A count or a price as people write it: 2,930; 755,000."""
    return f"{value:,.0f}"


def _pct(share: float) -> str:
    return f"{share * 100:.1f}%"


def _share(count: int, rows: int) -> float:
    return round(count / rows, 6) if rows else 0.0
