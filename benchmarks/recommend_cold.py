"""Wall seconds of ``mandc recommend FOLDER`` in fresh processes: cold (an empty ``MANDC_HOME``) and warm
(the same folder again), for this tree and, for the before/after breakdown, variants of it.

    python benchmarks/recommend_cold.py --base fe06c0c --repeats 2 --json FILE

Variants (each a copy of the tracked files, so they run side by side in one session on the same machine):

* ``now``: this working tree;
* ``now_unshipped``: the same without ``mandc/shipped`` (a cold call fits the selector, as when the
  shipped one is stale);
* ``base`` (with ``--base REV``): the tree at commit ``REV`` (``git archive``), e.g. before issue 17 item 5.

The folder (unless ``--folder``) is 100 PNGs of 256×256 with captions (the built-in ``photos_mixed`` and
``photos_bw`` photos, upscaled), flat imagefolder layout. Each repeat: a fresh ``MANDC_HOME``, one cold call,
two warm calls. The JSON also holds each variant's top-3 models, to show they rank alike.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_folder(out: Path, n: int = 100, size: int = 256) -> Path:
    from data import load_builtin

    out.mkdir(parents=True)
    images, captions = [], []
    for name in ("photos_mixed", "photos_bw"):
        ds = load_builtin(name)
        for part in (ds.train, ds.heldout):
            images += part.images
            captions += part.captions
    lines = []
    for i, (im, cap) in enumerate(list(zip(images, captions))[:n]):
        im.resize((size, size)).save(out / f"{i:04d}.png")
        lines.append(json.dumps({"file_name": f"{i:04d}.png", "text": cap}))
    (out / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return out


def copy_tree(dest: Path, rev: str | None = None, drop: tuple[str, ...] = ()) -> Path:
    dest.mkdir(parents=True)
    if rev:
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    else:
        files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                               check=True, capture_output=True).stdout.decode().split("\0")
        for f in filter(None, files):
            src = ROOT / f
            if src.is_file():
                (dest / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / f)
    for d in drop:
        shutil.rmtree(dest / d, ignore_errors=True)
    return dest


def run_once(tree: Path, home: Path, folder: Path) -> tuple[float, dict]:
    env = {**os.environ, "PYTHONPATH": str(tree), "MANDC_HOME": str(home), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "mandc.cli", "recommend", str(folder), "--json"], cwd=tree, env=env,
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise RuntimeError(f"mandc recommend failed in {tree}:\n{r.stderr[-2000:]}")
    rec = json.loads(r.stdout)
    return wall, {"top3": [e["model"] for e in rec["entries"][:3]], "scores": {e["model"]: round(e["score"], 6) for e in rec["entries"]},
                  "cached": rec["cached"], "seconds_in_recommend": rec["seconds"]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folder", type=Path, help="an imagefolder (default: 100 generated 256×256 photos)")
    ap.add_argument("--base", help="also time the tree at this git revision (the 'before')")
    ap.add_argument("--repeats", type=int, default=2, help="cold+warm rounds per variant (default 2)")
    ap.add_argument("--json", type=Path, help="write the result here too")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="recommend_cold-") as tmp:
        tmp = Path(tmp)
        folder = args.folder.resolve() if args.folder else make_folder(tmp / "folder100")
        trees = {"now": copy_tree(tmp / "now"), "now_unshipped": copy_tree(tmp / "unshipped", drop=("mandc/shipped",))}
        if args.base:
            trees["base"] = copy_tree(tmp / "base", rev=args.base)
        times = {v: {"cold": [], "warm": []} for v in trees}
        ranking = {}
        for i in range(args.repeats):  # interleaved, so load from other processes hits every variant alike
            for v, tree in trees.items():
                home = tmp / f"home-{v}-{i}"
                wall, info = run_once(tree, home, folder)
                times[v]["cold"].append(round(wall, 2))
                for _ in range(2):
                    wall, info_w = run_once(tree, home, folder)
                    times[v]["warm"].append(round(wall, 2))
                ranking[v] = {"top3": info["top3"], "cold_cached": info["cached"], "warm_cached": info_w["cached"],
                              "scores": info["scores"]}
                print(f"{v} round {i}: cold {times[v]['cold'][-1]} s, warm {times[v]['warm'][-2:]} s", file=sys.stderr)
    out = {"benchmark": "recommend_cold", "folder": str(args.folder or "100 generated 256x256 PNGs"),
           "repeats": args.repeats, "base": args.base, "cpu_count": os.cpu_count(), "python": platform.python_version(),
           "load_average_after": list(os.getloadavg()),
           "variants": {v: {"cold_s": t["cold"], "warm_s": t["warm"], "cold_median_s": statistics.median(t["cold"]),
                            "warm_median_s": statistics.median(t["warm"]), **ranking[v]} for v, t in times.items()}}
    ref = out["variants"]["now"]
    for v in out["variants"].values():
        v["cold_vs_now"] = round(v["cold_median_s"] / ref["cold_median_s"], 2)
        v["warm_vs_now"] = round(v["warm_median_s"] / ref["warm_median_s"], 2)
        v["same_top3_as_now"] = v["top3"] == ref["top3"]
        v["max_score_diff_vs_now"] = max(abs(v["scores"][m] - ref["scores"][m]) for m in ref["scores"])
    for v in out["variants"].values():
        del v["scores"]
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return out


if __name__ == "__main__":
    main()
