"""Hub crawling: candidate T2I models from the Hugging Face Hub enter the graph store with their lineage.

:func:`crawl` lists diffusers text-to-image repos with ``huggingface_hub`` and records, per repo and without
downloading any weights, a model node ``hub:org/name@sha`` (the same features as zoo models, from the
configs, the card and the safetensors headers), typed lineage edges to its base models, and the crawl
state (``Store.hub_repos``) that makes the next crawl incremental and a killed one resumable. The CLI is
``mandc hub crawl`` (:mod:`mandc.hub.cli`).
"""
from mandc.hub.crawl import CrawlConfig, Crawler, crawl, lineage_edges

__all__ = ["CrawlConfig", "Crawler", "crawl", "lineage_edges"]
