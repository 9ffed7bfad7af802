"""Method specs: one string names a sampler, a caching method and its budget.

    full              full compute, the policy's own sampler and K (DDPM-100 for DP-T)
    ddim:10           full compute with DDIM-10 (the trained noise schedule)
    bac:10            BAC (block-wise ACS + BUA), S=10 updates per block
    bac+last:10       the same, plus the authors' forced last step
    acs:20 / acs+last:20 / shared_acs:20 / uniform:20
    search:20         output-targeted search within Uniform S=20's FLOPs (bac.search)
    bac:5@ddim:10     any cached method on another sampler: METHOD[:S]@ddim:K or @ddpm:K
    file:PATH         a schedule file as it is (e.g. the bundled one)

Used by ``bac eval --methods`` and the benchmarks, so sweeps read the same everywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CACHED = ("bac", "acs", "shared_acs", "uniform", "search")
_SAMPLER = re.compile(r"^(ddpm|ddim):(\d+)$")


@dataclass(frozen=True)
class MethodSpec:
    method: str  # full | bac | acs | shared_acs | uniform | search | file
    budget: int | None = None  # S
    force_last_step: bool = False
    sampler: str | None = None  # None = the policy's own
    num_steps: int | None = None  # K; None = the policy's own
    path: str | None = None  # for method "file"

    @property
    def name(self) -> str:
        if self.method == "file":
            return f"file:{self.path}"
        base = "full" if self.method == "full" else \
            f"{self.method}{'+last' if self.force_last_step else ''}:{self.budget}"
        if self.sampler is None:
            return base
        if self.method == "full":
            return f"{self.sampler}:{self.num_steps}"
        return f"{base}@{self.sampler}:{self.num_steps}"


def parse_method(text: str) -> MethodSpec:
    """Parse one spec; the error lists what is accepted."""
    t = str(text).strip()
    help_ = ("use full, ddim:K, ddpm:K, METHOD:S or METHOD+last:S with METHOD in "
             f"{', '.join(CACHED)}, optionally @ddim:K / @ddpm:K, or file:PATH")
    if t.startswith("file:"):
        if not t[5:]:
            raise ValueError(f"method {text!r}: file: needs a schedule path; {help_}.")
        return MethodSpec("file", path=t[5:])
    head, _, sampler = t.partition("@")
    kind = K = None
    if sampler:
        m = _SAMPLER.match(sampler)
        if not m or int(m.group(2)) < 1:
            raise ValueError(f"method {text!r}: sampler {sampler!r} is not ddim:K or ddpm:K "
                             "with K >= 1.")
        kind, K = m.group(1), int(m.group(2))
    if head == "full":
        return MethodSpec("full", sampler=kind, num_steps=K)
    m = _SAMPLER.match(head)
    if m and not sampler:
        if int(m.group(2)) < 1:
            raise ValueError(f"method {text!r}: K must be >= 1.")
        return MethodSpec("full", sampler=m.group(1), num_steps=int(m.group(2)))
    name, colon, s = head.partition(":")
    last = name.endswith("+last")
    name = name[:-5] if last else name
    if name not in CACHED or not colon:
        raise ValueError(f"unknown method {text!r}; {help_}.")
    if not s.isdigit() or int(s) < 1:
        raise ValueError(f"method {text!r}: the budget S must be an integer >= 1. Got {s!r}.")
    if K is not None and int(s) > K:
        raise ValueError(f"method {text!r}: S={s} exceeds the sampler's K={K}.")
    if last and name in ("uniform", "search"):
        raise ValueError(f"method {text!r}: +last applies to the ACS-based methods "
                         "(bac, acs, shared_acs).")
    return MethodSpec(name, int(s), last, kind, K)
