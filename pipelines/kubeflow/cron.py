"""The cron of a recurring run, checked as the KFP backend parses it (robfig/cron v1.2.0
`cron.Parse`: 6 fields, seconds first; it also accepts 5 fields as seconds..month, so a standard
5-field crontab line would be accepted and mean something else: validate_cron() demands 6)."""
from __future__ import annotations

import re


_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_MONTHS = {m: i + 1 for i, m in enumerate(
    "jan feb mar apr may jun jul aug sep oct nov dec".split())}
_DAYS = {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}
_FIELDS = (("second", 0, 59, None), ("minute", 0, 59, None), ("hour", 0, 23, None),
           ("day of month", 1, 31, None), ("month", 1, 12, _MONTHS), ("day of week", 0, 6, _DAYS))


def validate_cron(expr: str) -> str:
    """KFP's cron (robfig/cron v1.2.0 cron.Parse): 6 fields `sec min hour dom month dow`, each
    `*`, `?`, N, N-M, with /step and comma lists, month and day names; or @daily, @every 6h...
    A 5-field crontab line is refused: KFP would read it seconds-first (see the module doc)."""
    expr = (expr or "").strip()
    if not expr:
        raise ValueError("empty --schedule")
    if expr.startswith("@"):
        if expr in _DESCRIPTORS:
            return expr
        if re.fullmatch(r"@every ((\d+(\.\d+)?)(ns|us|µs|ms|s|m|h))+", expr):
            return expr
        raise ValueError(f"--schedule {expr!r}: unknown descriptor; use one of "
                         f"{', '.join(_DESCRIPTORS)} or '@every <duration>' such as '@every 24h'")
    fields = expr.split()
    if len(fields) == 5:
        raise ValueError(
            f"--schedule {expr!r} has 5 fields: KFP's cron has 6, seconds first, and would read "
            f"this one as 'second minute hour day-of-month month'; write '0 {expr}'")
    if len(fields) != 6:
        raise ValueError(f"--schedule {expr!r}: KFP's cron has 6 fields "
                         f"(second minute hour day-of-month month day-of-week), got {len(fields)}")
    for text, (name, lo, hi, names) in zip(fields, _FIELDS):
        for part in text.split(","):
            _check_cron_range(part, name, lo, hi, names, expr)
    return expr


def _check_cron_range(part, name, lo, hi, names, expr) -> None:
    def bad(why):
        return ValueError(f"--schedule {expr!r}: {name} {part!r}: {why}")

    def value(tok):
        if names and tok.lower() in names:
            return names[tok.lower()]
        if not tok.isdigit():
            raise bad(f"{tok!r} is not a number" + (" or a name" if names else ""))
        return int(tok)

    range_step = part.split("/")
    if len(range_step) > 2:
        raise bad("too many slashes")
    low_high = range_step[0].split("-")
    if low_high[0] in ("*", "?"):
        if len(low_high) > 1:
            raise bad("a range cannot start with * or ?")
        start, end = lo, hi
    else:
        if len(low_high) > 2:
            raise bad("too many hyphens")
        start = value(low_high[0])
        end = value(low_high[1]) if len(low_high) == 2 else start
        if len(range_step) == 2 and len(low_high) == 1:
            end = hi  # N/step means N-max/step
    if len(range_step) == 2:
        if not range_step[1].isdigit() or int(range_step[1]) < 1:
            raise bad("the step must be a positive number")
    if start < lo or end > hi or start > end:
        raise bad(f"outside {lo}-{hi}" if start <= end else "start after end")
