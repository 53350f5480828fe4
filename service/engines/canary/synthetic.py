"""The built-in synthetic sample set: used when no recent provenance is available.

Deterministic (no randomness, no clock): the same 120 plans every time, covering every skill
of both cost models, short and long prompts, local and remote URLs, long shell commands,
iterations, and budgets from tight to generous.
"""

from __future__ import annotations

from typing import Any

from costsim_analytics.engines.cost_models.plans import KNOWN_SKILLS

SYNTHETIC_SIZE = 120

_SKILLS = KNOWN_SKILLS  # every skill the cost models price
_URLS = ("http://localhost:8080/health", "http://127.0.0.1/api", "https://api.example.com/v1")
_BUDGETS = (5, 10, 25, 50, 100, 1000)


def _params(skill: str, i: int) -> dict[str, Any]:
    if skill == "llm_invoke":
        return {"prompt": "Summarise the incident report. " * (1 + (i * 37) % 180)}
    if skill == "http_call":
        return {"url": _URLS[i % len(_URLS)], "timeout_s": (0.2, 5, 30)[i % 3]}
    if skill == "shell_lite":
        return {"command": "ls -la /data " + "--color=never " * (i % 12)}
    if skill in ("fs_read", "fs_write"):
        return {"path": f"/data/file-{i}.json"}
    if skill in ("kv_get", "kv_set"):
        return {"key": f"k{i}"}
    if skill == "email_send":
        return {"to": "ops@example.com", "subject": f"report {i}"}
    return {}


def synthetic_samples() -> list[tuple[str, dict[str, Any]]]:
    """(sample id, plan input) pairs.

    Example:
        >>> samples = synthetic_samples()
        >>> len(samples), samples[0][0]
        (120, 'synthetic-000')
    """
    samples = []
    for i in range(SYNTHETIC_SIZE):
        length = 1 + i % 6
        plan = []
        for j in range(length):
            skill = _SKILLS[(i * 7 + j * 3) % len(_SKILLS)]
            step: dict[str, Any] = {"skill": skill, "params": _params(skill, i + j)}
            if (i + j) % 5 == 0:
                step["iterations"] = 1 + (i + j) % 3
            plan.append(step)
        if i % 17 == 0:
            plan.append({"skill": "custom_enricher", "params": {}})  # an unknown skill
        samples.append((f"synthetic-{i:03d}", {"plan": plan, "budget_cents": _BUDGETS[i % 6]}))
    return samples
