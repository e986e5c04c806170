"""`hybridserve rollout start|status|promote|rollback`: a model's new version released through
a running router (`serve`, local or on AWS), by its rollout API (router/rollout_endpoints.py)."""

from __future__ import annotations

import json
from typing import Any

import click

from hybridserve.cli.common import KEY, URL, UserError, call

MODEL = click.option("--model", required=True, help="The model name clients send.")


@click.group()
def rollout() -> None:
    """Release a model's new version: canary steps, blue/green or shadow, judged and promoted
    (or rolled back) by the router."""


def percent(value: str, option: str) -> float:
    """`5%`, `5` or `0.05` as a share in (0, 1]; UserError naming the option otherwise."""
    text = value.strip()
    try:
        x = float(text.rstrip("%"))
    except ValueError:
        raise UserError(f"{option}: expected a share such as 5% or 0.05, got {value!r}") from None
    share = x / 100.0 if text.endswith("%") or x > 1.0 else x
    if not 0.0 < share <= 1.0:
        raise UserError(f"{option}: expected a share in (0%, 100%], got {value!r}")
    return share


@rollout.command()
@URL
@KEY
@MODEL
@click.option("--version", "version", required=True, help="The new version.")
@click.option(
    "--served-as",
    default=None,
    help="The model name the new version is served under [default: MODEL-vVERSION].",
)
@click.option("--canary", default=None, help="The first step's share, e.g. 5%.")
@click.option(
    "--steps", default=None, help="Every step's share, comma-separated [default: 5%,25%,100%]."
)
@click.option("--blue-green", is_flag=True, help="A baseline, then the whole cut-over at once.")
@click.option("--shadow", default=None, help="Mirror this share to the new version, answer none.")
@click.option("--step-min-s", type=float, default=None, help="Each step's least duration.")
@click.option("--bake-s", type=float, default=None, help="At 100% before the old version goes.")
@click.option(
    "--min-requests",
    type=click.IntRange(min=10),
    default=None,
    help="Requests per version and path before latency is judged [default: 200].",
)
@click.option(
    "--manual", is_flag=True, help="Promote steps only by hand (rollbacks stay automatic)."
)
def start(url: str, api_key: str | None, model: str, **kw: Any) -> None:
    """Start a rollout and print its status."""
    spec = _spec(model, kw)
    print(json.dumps(call(url, api_key, "POST", f"/rollouts/{model}", spec), indent=2))


def _spec(model: str, kw: dict[str, Any]) -> dict[str, Any]:
    modes = [m for m in ("canary", "steps", "blue_green", "shadow") if kw[m]]
    if kw["blue_green"] and kw["shadow"]:
        raise UserError("--blue-green and --shadow: choose one mode")
    if (kw["blue_green"] or kw["shadow"]) and (kw["canary"] or kw["steps"]):
        raise UserError(f"--{modes[-1].replace('_', '-')} takes no --canary or --steps")
    spec: dict[str, Any] = {"model": model, "version": kw["version"]}
    if kw["served_as"]:
        spec["served_as"] = kw["served_as"]
    if kw["blue_green"]:
        spec["mode"] = "blue-green"
    elif kw["shadow"]:
        spec["mode"] = "shadow"
        spec["shadow"] = percent(kw["shadow"], "--shadow")
    if kw["steps"]:
        spec["steps"] = [percent(s, "--steps") for s in kw["steps"].split(",")]
    elif kw["canary"]:
        first = percent(kw["canary"], "--canary")
        spec["steps"] = [first] + [w for w in (0.25, 1.0) if w > first]
    for k in ("step_min_s", "bake_s"):
        if kw[k] is not None:
            spec[k] = kw[k]
    if kw["manual"]:
        spec["auto"] = False
    if kw["min_requests"] is not None:
        spec["policy"] = {"min_requests": kw["min_requests"]}
    return spec


@rollout.command()
@URL
@KEY
@click.option("--model", default=None, help="One model's rollout [default: every model's].")
def status(url: str, api_key: str | None, model: str | None) -> None:
    """Print the rollouts' phase, weight, samples and the judge's last word."""
    path = "/rollouts" if model is None else f"/rollouts/{model}"
    print(json.dumps(call(url, api_key, "GET", path), indent=2))


@rollout.command()
@URL
@KEY
@MODEL
def promote(url: str, api_key: str | None, model: str) -> None:
    """Move the rollout to its next step now (from shadow: the cut-over; baking: done)."""
    print(json.dumps(call(url, api_key, "POST", f"/rollouts/{model}/promote"), indent=2))


@rollout.command()
@URL
@KEY
@MODEL
def rollback(url: str, api_key: str | None, model: str) -> None:
    """Send every request back to the stable version now."""
    print(json.dumps(call(url, api_key, "POST", f"/rollouts/{model}/rollback"), indent=2))
