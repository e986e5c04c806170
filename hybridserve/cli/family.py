"""`hybridserve family`: build a model family (fp32, fp16, int8, a distilled student) with each
variant's measured accuracy, and optionally its serving profile and load footprint."""

from __future__ import annotations

import json
from typing import Any

import click

from hybridserve.cli.common import EXIT_USAGE, user_errors

MODELS = ("distilbert", "resnet50", "mlp")


@click.group()
def family() -> None:
    """Model families: interchangeable variants of one model, each with its accuracy."""


def _usage(option: str, value: str, choices: tuple[str, ...]) -> click.UsageError:
    e = click.UsageError(f"{option}: unknown value {value!r}; choose from {', '.join(choices)}")
    e.exit_code = EXIT_USAGE
    return e


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


@family.command("build")
@click.option("--model", required=True, type=click.Choice(MODELS), help="Reference model.")
@click.option("--output", "output_dir", required=True, type=click.Path(file_okay=False))
@click.option(
    "--variants",
    default="fp32,fp16,int8,distilled",
    show_default=True,
    help="Comma-separated: fp32, fp16, int8, distilled, distilled-int8.",
)
@click.option("--profile", is_flag=True, help="Also profile each variant and measure its load.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--eval-inputs", type=int, default=1024, show_default=True)
@click.option("--batch-sizes", default="1,2,4,8,16,32", show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--repeats", type=int, default=10, show_default=True, help="Profile repeats.")
@click.option("--json", "as_json", is_flag=True, help="Print family.yaml's content as JSON.")
def build(**kw: Any) -> None:
    """Build each variant's artifact, measure its top-1 agreement with fp32 on held-out
    generated inputs, and write DIR/family.yaml."""
    from predictors.family import VARIANTS, parse_variants

    try:
        variants = parse_variants(kw["variants"])
    except ValueError:
        bad = next(v.strip() for v in kw["variants"].split(",") if v.strip() not in VARIANTS)
        raise _usage("--variants", bad, VARIANTS) from None
    with user_errors():
        _build(variants=variants, **{k: v for k, v in kw.items() if k != "variants"})


def _build(
    model: str,
    output_dir: str,
    variants: tuple[str, ...],
    profile: bool,
    seed: int,
    eval_inputs: int,
    batch_sizes: str,
    threads: int,
    repeats: int,
    as_json: bool,
) -> None:
    from predictors.family import FAMILY_FILE, build_family

    sizes = _sizes(batch_sizes)
    if threads < 1 or repeats < 1:
        raise ValueError("--threads and --repeats must be >= 1")
    report = build_family(
        model,
        output_dir,
        variants,
        seed=seed,
        eval_inputs=eval_inputs,
        profile=profile,
        batch_sizes=sizes,
        threads=threads,
        repeats=repeats,
        log=lambda msg: click.echo(msg, err=True),
    )
    if as_json:
        click.echo(json.dumps(report.as_dict()))
        return
    _table(report)
    ro = report.reference_outputs
    click.echo(
        f"reference: majority class {ro['majority_fraction']:.4f} of inputs, median top-1 margin "
        f"{ro['margin_p50']:.4g}; random student agreement {ro['random_student_agreement']:.4f}",
        err=True,
    )
    if report.distillation:
        d = report.distillation
        click.echo(f"distilled: {d['architecture']}, {d['seconds']} s", err=True)
    click.echo(f"family written to {output_dir}/{FAMILY_FILE}", err=True)


def _sizes(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(
            f"--batch-sizes: expected comma-separated integers, got {text!r}"
        ) from None


def _table(report: Any) -> None:
    """variant, accuracy, cosine, size, parameters, batch-1 ms (when profiled), rejections."""
    click.echo(
        f"{'variant':<16} {'accuracy':>8} {'cosine':>8} {'size MB':>9} {'params':>8} "
        f"{'batch-1 ms':>10}"
    )
    for name, v in report.variants.items():
        b1 = (v.profile or {}).get("reference", {}).get("batch_ms", {}).get(1)
        click.echo(
            f"{name:<16} {v.accuracy:>8.4f} {v.cosine:>8.4f} {v.size_mb:>9.3g} "
            f"{_count(v.params):>8} {('-' if b1 is None else f'{b1:.3g}'):>10}"
        )
    for name, reason in report.rejected.items():
        click.echo(f"{name:<16} rejected: {reason}")


@family.command("profile")
@click.option("--family", "family_dir", required=True, type=click.Path(file_okay=False))
@click.option("--batch-sizes", default="1,2,4,8,16,32", show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--repeats", type=int, default=10, show_default=True)
def profile_cmd(family_dir: str, batch_sizes: str, threads: int, repeats: int) -> None:
    """Re-measure every variant's profile and load footprint of a built family on this machine
    (accuracy untouched); rewrites DIR/family.yaml."""
    from predictors.family import profile_family

    with user_errors():
        sizes = _sizes(batch_sizes)
        if threads < 1 or repeats < 1:
            raise ValueError("--threads and --repeats must be >= 1")
        report = profile_family(
            family_dir,
            batch_sizes=sizes,
            threads=threads,
            repeats=repeats,
            log=lambda msg: click.echo(msg, err=True),
        )
        _table(report)
