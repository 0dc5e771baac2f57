"""The result of one check, how a report is printed (text or JSON), and its exit code.

A check has a name, a verdict (pass, warn, fail), a one-line detail and, unless it
passed, the fix. A check that could not run because an earlier one did not pass is
*skipped*: it keeps the verdict of the check that blocked it (a device in use by the
daemon is a warn, so the level check it blocks is a warn too) and its detail begins with
"skipped:", so a JSON verdict is always one of pass, warn, fail and a skipped check never
reads as a pass. The exit code is the one of the first check that failed by itself
(skipped ones never decide it); warnings keep it 0.

Every text printed goes through ``health.logsetup.redact`` (the API key is registered
there as soon as it is loaded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from edgevoice.errors import EXIT_FAILURE, EXIT_OK
from edgevoice.health.logsetup import redact

Verdict = Literal["pass", "warn", "fail"]
SKIPPED = "skipped: "


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    detail: str
    fix: str = ""
    exit_code: int = EXIT_FAILURE  # when it failed by itself
    skipped: bool = False

    @property
    def ok(self) -> bool:
        """Passed or only warned: the checks that depend on it can run."""
        return self.verdict != "fail" and not self.skipped


def passed(name: str, detail: str) -> Check:
    return Check(name, "pass", detail)


def warned(name: str, detail: str, fix: str) -> Check:
    return Check(name, "warn", detail, fix)


def failed(name: str, detail: str, fix: str, exit_code: int = EXIT_FAILURE) -> Check:
    return Check(name, "fail", detail, fix, exit_code)


def skipped(name: str, blocker: Check, why: str = "") -> Check:
    """``name`` not run because ``blocker`` did not pass; it takes the blocker's verdict."""
    reason = why or f"needs '{blocker.name}', which did not pass"
    return Check(name, blocker.verdict, SKIPPED + reason, "", blocker.exit_code, skipped=True)


def exit_code(checks: list[Check]) -> int:
    for check in checks:
        if check.verdict == "fail" and not check.skipped:
            return check.exit_code
    return EXIT_OK


def _line(text: str) -> str:
    return redact(" ".join(text.split()))


def render_text(checks: list[Check]) -> str:
    """One line per check (verdict, name, detail); the fix on the next line when there is one."""
    width = max((len(c.name) for c in checks), default=0)
    lines: list[str] = []
    for c in checks:
        lines.append(f"{c.verdict:<4}  {c.name:<{width}}  {_line(c.detail)}")
        if c.fix:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {_line(c.fix)}")
    code = exit_code(checks)
    fails = sum(c.verdict == "fail" and not c.skipped for c in checks)
    warns = sum(c.verdict == "warn" and not c.skipped for c in checks)
    skips = sum(c.skipped for c in checks)
    summary = f"{fails} failed, {warns} warning(s)" + (f", {skips} skipped" if skips else "")
    lines.append(f"result: {summary}; exit {code}")
    return "\n".join(lines)


def render_json(checks: list[Check]) -> str:
    doc = {
        "checks": [
            {"name": c.name, "verdict": c.verdict, "detail": _line(c.detail),
             "fix": _line(c.fix)}
            for c in checks
        ],
        "exit_code": exit_code(checks),
    }
    return json.dumps(doc, indent=2)


def first_failure(checks: list[Check]) -> Check | None:
    for check in checks:
        if check.verdict == "fail" and not check.skipped:
            return check
    return None
