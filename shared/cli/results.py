"""The results of `check` and what decides its exit: one backend's run, the whole check, and the verdict.

`check.py` computes them, `report.py` renders them; both import this module (which imports neither).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import tolerances
from ..config import ViTConfig
from ..errors import EXIT_CRASH, EXIT_NONFINITE, EXIT_OK, EXIT_OUT_OF_BOUNDS, EXIT_UNPROVEN


@dataclass
class BackendRun:
    backend: str
    stages: dict[str, np.ndarray] | None = None
    verdict: tolerances.Verdict | None = None
    error: str | None = None
    unsupported: bool = False
    nonfinite: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    meta: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.unsupported:
            return "unsupported"
        if self.nonfinite:
            return "non-finite"
        if self.error:
            return "error"
        return "pass" if self.verdict.passed else "FAIL"


@dataclass
class CheckResult:
    config: ViTConfig
    dtype: str
    images: np.ndarray
    ref64: dict[str, np.ndarray]
    ref_lowp: dict[str, np.ndarray] | None
    runs: list[BackendRun]
    pairs: list[tolerances.PairResult]
    labels: np.ndarray | None = None
    against: dict | None = None  # the proof against the source library (prove_against), when asked for

    @property
    def passed(self) -> bool:
        return (all(r.status in ("pass", "unsupported") for r in self.runs) and all(p.passed for p in self.pairs)
                and (self.against is None or self.against["status"] in ("pass", "not verified")))

    @property
    def headline(self) -> str:
        """PASS, FAIL or NOT PROVEN (the source could not be run): the word `check_outcome`'s line and the report
        start with."""
        return {EXIT_OK: "PASS", EXIT_UNPROVEN: "NOT PROVEN"}.get(check_outcome(self)[0], "FAIL")

    @property
    def any_error(self) -> bool:
        return any(r.status == "error" for r in self.runs)

    def to_json(self) -> dict:
        def stage_rows(v):
            return [dict(stage=s.stage, rel_l2=s.rel_l2, bound=s.bound, max_abs=s.max_abs, max_rel=s.max_rel,
                         cosine=s.cosine, passed=s.passed) for s in v.stages]

        out = {
            "config": self.config.to_dict(), "dtype": self.dtype, "batch": int(self.images.shape[0]),
            "image_size": list(self.images.shape[2:]), "passed": self.passed,
            "policy": {"f32_safety": tolerances.F32_SAFETY, "lowp_multiplier": tolerances.LOWP_MULTIPLIER,
                       "lowp_floor_units": tolerances.LOWP_FLOOR_UNITS},
            "backends": {}, "pairs": [p.__dict__ | {"passed": p.passed} for p in self.pairs],
            "against": self.against,
        }
        for r in self.runs:
            d = {"status": r.status, "seconds": r.seconds, "meta": r.meta, "error": r.error,
                 "nonfinite": r.nonfinite or None}
            if r.verdict is not None:
                f = r.verdict.first_failure
                d.update(stages=stage_rows(r.verdict), top1_agreement=r.verdict.top1_agreement,
                         first_failure=f.stage if f else None)
                if self.labels is not None and r.stages is not None and self.config.num_classes > 1:
                    d["accuracy"] = float(np.mean(np.argmax(r.stages["logits"], 1) == self.labels))
                    d["predictions"] = np.argmax(r.stages["logits"], 1).tolist()
            out["backends"][r.backend] = d
        return out


def against_verdict(a: dict | None) -> tuple[int, str] | None:
    """(exit code, closing line) when the proof decides the outcome: a mismatch (EXIT_OUT_OF_BOUNDS, naming the
    library, the error and the bound) or a source that could not run (EXIT_UNPROVEN, saying why); None otherwise."""
    from rich.markup import escape

    if a is None:
        return None
    artifact = a.get("kind") == "artifact"
    if a["status"] == "FAIL":
        err = (f": relative L2 {a['rel_l2']:.2e} against a bound of {a['bound']:.1e}" if "rel_l2" in a
               else f": {a['message']}")
        if artifact:
            return EXIT_OUT_OF_BOUNDS, f"[bold red]FAIL[/]: the artifact {escape(a['source'])} ({a['library']}) " \
                                       f"leaves its bound first at {a['stage']}{escape(err)}"
        return EXIT_OUT_OF_BOUNDS, f"[bold red]FAIL[/]: the source library ({a['library']}) disagrees with the " \
                                   f"converted file{escape(err)}"
    if a["status"] == "error" and artifact:
        return EXIT_UNPROVEN, f"[bold yellow]NOT PROVEN[/]: {escape(a['library'])} could not run the artifact (see " \
                              f"above); nothing is proven either way"
    if a["status"] == "error":
        return EXIT_UNPROVEN, f"[bold yellow]NOT PROVEN[/]: {escape(a['library'])} could not run the source (see " \
                              f"above); nothing is proven either way"
    return None


def check_outcome(result: CheckResult) -> tuple[int, str]:
    """(exit code, closing line) of a check: one place decides both, so the last line names what failed."""
    failed = [r for r in result.runs if r.status == "FAIL"]
    bad_pairs = [p for p in result.pairs if not p.passed]
    if failed:
        return EXIT_OUT_OF_BOUNDS, "[bold red]FAIL[/]: see the first stage out of bound above"
    if bad_pairs:
        p = bad_pairs[0]
        return EXIT_OUT_OF_BOUNDS, f"[bold red]FAIL[/]: {p.a} and {p.b} disagree beyond their bound at " \
                                   f"{p.first_failure}"
    if any(r.status == "non-finite" for r in result.runs):
        return EXIT_NONFINITE, "[bold red]FAIL[/]: a backend's output is not finite (see above)"
    if result.any_error:
        crashed = ", ".join(r.backend for r in result.runs if r.status == "error")
        return EXIT_CRASH, f"[bold red]FAIL[/]: {crashed} crashed (see the table above)"
    decided = against_verdict(result.against)
    if decided:
        return decided
    return EXIT_OK, "[bold green]PASS[/]"
