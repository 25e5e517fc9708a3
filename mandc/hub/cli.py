"""``mandc hub``: the Hub crawl's commands (registered in :mod:`mandc.cli`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

hub_app = typer.Typer(help="The Hugging Face Hub: crawl candidate T2I models into the graph store.",
                      no_args_is_help=True)


@hub_app.command("crawl")
def hub_crawl(
    endpoint: Optional[str] = typer.Option(None, help="Hub URL (default: $HF_ENDPOINT, else https://huggingface.co)."),
    limit: int = typer.Option(100, min=1, help="How many repos to list."),
    sort: str = typer.Option("downloads", help="Listing order: downloads, likes, last_modified, trending_score."),
    graph: Optional[Path] = typer.Option(None, "--graph", help="Graph store (SQLite; default $MANDC_HOME/graph.sqlite)."),
    retries: int = typer.Option(4, min=0, help="Retries of one request on 429/5xx/timeouts."),
    timeout: float = typer.Option(30.0, min=0.1, help="Per-request timeout in seconds."),
    as_json: bool = typer.Option(False, "--json", help="Print the crawl summary as JSON."),
) -> None:
    """List diffusers text-to-image repos and store each as a model node hub:org/name@sha with its configs,
    safetensors-header parameter counts, card data and lineage; no weights are downloaded. Repos whose sha
    is unchanged since the last crawl are not fetched again."""
    from mandc.hub.crawl import CrawlConfig, crawl
    from mandc.store import Store, StoreError

    try:
        with Store(graph) as store:
            summary = crawl(store, CrawlConfig(endpoint=endpoint, limit=limit, sort=sort, max_retries=retries,
                                               timeout_s=timeout))
    except StoreError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps(summary, indent=1))
        return
    for repo, why in sorted(summary["skipped"].items()):
        typer.echo(f"skipped {repo}: {why}")
    for repo, why in sorted(summary["failed"].items()):
        typer.echo(f"failed  {repo}: {why} (retried next crawl)")
    typer.echo(f"{len(summary['ok'])} models stored, {summary['unchanged']} unchanged, "
               f"{summary['lineage_edges']} lineage edges in {summary['store']}")
