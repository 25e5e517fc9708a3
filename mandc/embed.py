"""Graph embeddings of the matching graph: GraphSAGE trained by link prediction (inductive), and node2vec
(transductive, the ablation).

**GraphSAGE** (:class:`SageEmbedder`). Nodes start from their own features — a model's feature dict
(z-scored over the graph's models) or a dataset's vector (z-scored with the graph's fixed statistics) —
encoded per node type to ``dim`` channels. Two heterogeneous GraphSAGE layers (one PyG
``SAGEConv``, mean aggregation, per relation; summed per destination type) pass messages over

* ``(dataset, sim, dataset)`` — the similarity edges;
* ``(model, good, dataset)`` and ``(dataset, rev_good, model)`` — the *positive* performance edges.

``z_v`` (``[dim]``) is the output of layer 2. A pair is scored by ``s(m, d) = ⟨z_m, z_d⟩``. Training
is link prediction with binary cross-entropy: a pair is positive when the model is among the
``pos_top`` best of the dataset (normalised score ranks), negative when its normalised score is below
``neg_threshold``, ignored in between (defaults: top 3, score < 0.5). The matrix of a profiled
dataset is complete, so every non-positive pair is a measured low-performance pair; we add no random
negatives (pairs with unprofiled datasets are unknown, not bad). Measured on the reference (LODO, one
seed): ranking by ``s`` alone picks the best model on 22% of the datasets with top-3 positives and
41–56% with top-1 positives (``pos_top=1``, ``pos_score=0.9``), against 69% for "the winner of the
most similar dataset"; as a LightGBM feature neither beat the other (2 seeds), so the default stays.
TransferGraph (Li et al. 2024) likewise separates supervision edges from message-passing edges
(``RandomLinkSplit(disjoint_train_ratio=...)``) and samples negatives among low-performance pairs.

Inductive by construction: a dataset with only similarity edges gets ``z`` from its own features and
its neighbours'. Training mimics exactly that: each step runs ``masks`` copies of the graph (batched
block-diagonally, nearly free on ~70 nodes), each hiding all performance edges of its own random
``mask_frac`` of the profiled datasets from the message passing, and supervises only the hidden
datasets' pairs, so the model learns to score datasets whose own performance it cannot see (and never
learns to read a label off an edge it is predicting).

**node2vec** (:class:`Node2VecEmbedder`): PyG's ``Node2Vec`` needs ``torch_cluster`` or ``pyg-lib``
for its random walks, and neither is installed, so the biased second-order walks (return ``p``,
in-out ``q``) are drawn here in numpy and the skip-gram with negative sampling is trained in plain
torch. Walks run over the sim edges and the positive perf edges; a node's embedding is its learned
vector. Transductive: it cannot embed a node that was not in the graph it was trained on.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mandc.graph import MatchingGraph

# ------------------------------------------------------------------------------------------ graph tensors


def model_feature_names(graph: MatchingGraph) -> list[str]:
    """The sorted union of the models' feature keys (missing keys read as 0)."""
    return sorted({k for m in graph.models for k in graph.model_features(m)})


def model_matrix(graph: MatchingGraph, names: list[str] | None = None) -> np.ndarray:
    """``[M, F]`` raw model features in ``graph.models`` order."""
    names = model_feature_names(graph) if names is None else names
    feats = [graph.model_features(m) for m in graph.models]  # one dict copy per model, not per (model, key)
    return np.array([[f.get(k, 0.0) for k in names] for f in feats], dtype=np.float64)


def positive_pairs(graph: MatchingGraph, pos_top: int, pos_score: float = 1.0) -> set[tuple[str, str]]:
    """``(model, dataset)`` pairs where the model ranks among the ``pos_top`` best of a profiled dataset
    or reaches a normalised score ``≥ pos_score`` there (near-ties of the best)."""
    out = set()
    for d in graph.profiled:
        sc = graph.scores(d)
        for i, m in enumerate(sorted(sc, key=lambda m: (-sc[m], m))):
            if i < pos_top or sc[m] >= pos_score:
                out.add((m, d))
    return out


@dataclass
class GraphTensors:
    """The graph as tensors: ``xm [M, Fm]``, ``xd [N, D]`` (z-scored), sim edges ``sim [2, E]``
    (both directions, dataset indices), positive pairs ``pos [2, P]`` (model idx, dataset idx)."""

    models: list[str]
    datasets: list[str]
    xm: torch.Tensor
    xd: torch.Tensor
    sim: torch.Tensor
    pos: torch.Tensor

    @classmethod
    def from_graph(cls, graph: MatchingGraph, pos_top: int, use_data_edges: bool = True, pos_score: float = 1.0) -> "GraphTensors":
        models, datasets = graph.models, graph.datasets
        xm = model_matrix(graph)
        sd = xm.std(0)
        xm = (xm - xm.mean(0)) / np.where(sd > 1e-12, sd, 1.0)
        xd = graph.standardized(np.stack([graph.vector(d) for d in datasets]))
        di = {d: i for i, d in enumerate(datasets)}
        mi = {m: i for i, m in enumerate(models)}
        sim = [(di[u[2:]], di[v[2:]]) for u, v, _ in graph.edges("sim")] if use_data_edges else []
        sim = sim + [(b, a) for a, b in sim]
        pos = sorted((mi[m], di[d]) for m, d in positive_pairs(graph, pos_top, pos_score))
        as_edges = lambda pairs: torch.tensor(pairs, dtype=torch.long).reshape(-1, 2).T.contiguous()  # noqa: E731
        return cls(models, datasets, torch.tensor(xm, dtype=torch.float32), torch.tensor(xd, dtype=torch.float32),
                   as_edges(sim), as_edges(pos))


# ------------------------------------------------------------------------------------------ GraphSAGE


@dataclass
class SageConfig:
    dim: int = 32               # channels of every layer and of the output embedding
    epochs: int = 30            # Adam steps; each sees `masks` masked copies of the whole graph
    masks: int = 8              # masked copies per step (batched block-diagonally: nearly free)
    lr: float = 0.02
    weight_decay: float = 1e-4
    dropout: float = 0.1        # on the encoded inputs
    pos_top: int = 3            # positives: the top-k models of each profiled dataset ...
    pos_score: float = 1.0      # ... and any model with normalised score ≥ this (1.0: only exact ties)
    neg_threshold: float = 0.5  # negatives: normalised score below this
    mask_frac: float = 0.25     # fraction of profiled datasets whose perf edges each epoch hides
    use_data_edges: bool = True  # False: no (dataset, sim, dataset) relation (the ablation)


def _adj(edges: torch.Tensor, n_src: int, n_dst: int) -> torch.Tensor:
    """``[n_dst, n_src]`` sparse CSR adjacency (PyG's ``adj_t``) of ``edges [2, E]`` (row 0 source)."""
    vals = torch.ones(edges.shape[1])
    with warnings.catch_warnings():  # torch flags sparse CSR as beta; PyG's SAGEConv takes it as adj_t
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_coo_tensor(edges.flip(0), vals, (n_dst, n_src)).coalesce().to_sparse_csr()


class SageNet(nn.Module):
    """Type encoders + 2 heterogeneous GraphSAGE layers. Each layer is one PyG ``SAGEConv`` (mean
    aggregation) per relation, summed per destination type — what ``HeteroConv(aggr="sum")`` computes,
    written out because its dict plumbing doubled the cost of an epoch on this ~70-node graph::

        h_d' = SAGE_sim(h_d, h_d) + SAGE_good(h_m → h_d)      h_m' = SAGE_rev(h_d → h_m)

    ``forward(xm [M,Fm], xd [N,D], sim [2,E], good [2,P]) -> (zm [M,dim], zd [N,dim])``; ``good`` are the
    (model, dataset) pairs passing messages (both ways)."""

    def __init__(self, fm: int, fd: int, dim: int, dropout: float):
        super().__init__()
        from torch_geometric.nn import SAGEConv

        self.enc_m, self.enc_d = nn.Linear(fm, dim), nn.Linear(fd, dim)
        self.dropout = dropout
        self.layers = nn.ModuleList([nn.ModuleDict({"sim": SAGEConv(dim, dim), "good": SAGEConv(dim, dim),
                                                    "rev": SAGEConv(dim, dim)}) for _ in range(2)])

    def forward(self, xm, xd, sim, good):
        M, N = xm.shape[0], xd.shape[0]
        a_sim, a_good, a_rev = _adj(sim, N, N), _adj(good, M, N), _adj(good.flip(0), N, M)
        hm = F.dropout(F.relu(self.enc_m(xm)), self.dropout, self.training)
        hd = F.dropout(F.relu(self.enc_d(xd)), self.dropout, self.training)
        for i, layer in enumerate(self.layers):
            hd, hm = layer["sim"](hd, a_sim) + layer["good"]((hm, hd), a_good), layer["rev"]((hd, hm), a_rev)
            if i == 0:
                hd, hm = F.relu(hd), F.relu(hm)
        return hm, hd


class SageEmbedder:
    """GraphSAGE link-prediction embedder (see the module docstring).

    ``fit(graph, seed)`` trains on ``graph``'s perf edges; ``embed(graph, hide=())`` runs the trained
    net on any graph with the same model features (a new dataset node included) and returns
    ``(zm: {model: [dim]}, zd: {dataset: [dim]})`` with the perf edges of the datasets in ``hide``
    removed from the message passing."""

    Config = SageConfig

    def __init__(self, cfg: SageConfig | None = None):
        self.cfg = cfg or SageConfig()
        self.net: SageNet | None = None
        self.history: list[float] = []

    def fit(self, graph: MatchingGraph, seed: int = 0) -> "SageEmbedder":
        cfg = self.cfg
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        t = GraphTensors.from_graph(graph, cfg.pos_top, cfg.use_data_edges, cfg.pos_score)
        di = {d: i for i, d in enumerate(t.datasets)}
        mi = {m: i for i, m in enumerate(t.models)}
        profiled = [di[d] for d in graph.profiled]
        if not profiled:
            raise ValueError("the graph has no performance edges to learn from")
        pos = positive_pairs(graph, cfg.pos_top, cfg.pos_score)
        pairs, labels = [], []  # every supervised (model, dataset) pair with its 0/1 label
        for d in graph.profiled:
            for m, s in graph.scores(d).items():
                if (m, d) in pos or s < cfg.neg_threshold:
                    pairs.append((mi[m], di[d]))
                    labels.append(float((m, d) in pos))
        pairs = torch.tensor(pairs, dtype=torch.long).T    # [2, P]
        labels = torch.tensor(labels)                      # [P]
        self.net = net = SageNet(t.xm.shape[1], t.xd.shape[1], cfg.dim, cfg.dropout)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
        n_mask = max(1, int(round(cfg.mask_frac * len(profiled))))
        self.history = []
        net.train()
        for _ in range(cfg.epochs):
            # `masks` copies of the graph in one block-diagonal batch, each hiding its own random datasets
            hidden = torch.zeros(cfg.masks, len(t.datasets), dtype=torch.bool)
            for b in range(cfg.masks):
                hidden[b, rng.choice(profiled, n_mask, replace=False)] = True
            zm, zd = _batched_forward(net, t, hidden)                     # [B, M, dim], [B, N, dim]
            logits = (zm[:, pairs[0]] * zd[:, pairs[1]]).sum(-1)           # [B, P]
            sel = hidden[:, pairs[1]]                                      # supervise hidden datasets only
            loss = F.binary_cross_entropy_with_logits(logits[sel], labels.expand_as(logits)[sel])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            self.history.append(loss.item())
        net.eval()
        self._feature_names = model_feature_names(graph)
        return self

    @torch.no_grad()
    def embed_many(self, graph: MatchingGraph, hides: list, need: list | None = None,
                   local_rows: int | None = None) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """``[embed(graph, hide) for hide in hides]`` in one batched forward pass.

        ``need`` (one ``(model refs, dataset refs)`` per hide): only those nodes' embeddings are wanted, and
        each copy's dicts hold just them. Then, when the ``B`` full copies would exceed ``local_rows`` node
        rows (default :data:`LOCAL_ROWS`), each copy runs on the 2-hop neighbourhood of its needed nodes
        only (:func:`_local_forward`): exact, since two message-passing layers see nothing further, and it
        costs what the needed nodes' neighbourhoods hold instead of ``B·(M+N)`` rows."""
        if self.net is None:
            raise RuntimeError("SageEmbedder.embed before fit")
        if model_feature_names(graph) != self._feature_names:
            raise ValueError("the graph's model features differ from those the embedder was trained on")
        if not hides:  # e.g. an empty cross-fitting fold (fewer training datasets than folds)
            return []
        t = GraphTensors.from_graph(graph, self.cfg.pos_top, self.cfg.use_data_edges, self.cfg.pos_score)
        di = {d: i for i, d in enumerate(t.datasets)}
        hidden = torch.zeros(len(hides), len(t.datasets), dtype=torch.bool)
        for b, h in enumerate(hides):
            hidden[b, [di[d] for d in h if d in di]] = True
        if need is not None and len(hides) * (len(t.models) + len(t.datasets)) > (local_rows or LOCAL_ROWS):
            mi = {m: i for i, m in enumerate(t.models)}
            idx = [(np.array([mi[m] for m in ms], dtype=np.int64), np.array([di[d] for d in ds], dtype=np.int64))
                   for ms, ds in need]
            out = _local_forward(self.net, t, hidden, idx, local_rows or LOCAL_ROWS)
            return [({m: zm[i] for i, m in enumerate(ms)}, {d: zd[i] for i, d in enumerate(ds)})
                    for (ms, ds), (zm, zd) in zip(need, out)]
        zm, zd = _batched_forward(self.net, t, hidden)
        zm, zd = zm.numpy(), zd.numpy()
        if need is not None:
            mi = {m: i for i, m in enumerate(t.models)}
            return [({m: zm[b, mi[m]] for m in ms}, {d: zd[b, di[d]] for d in ds}) for b, (ms, ds) in enumerate(need)]
        return [({m: zm[b, i] for i, m in enumerate(t.models)}, {d: zd[b, i] for i, d in enumerate(t.datasets)})
                for b in range(len(hides))]

    def embed(self, graph: MatchingGraph, hide=()) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        return self.embed_many(graph, [list(hide)])[0]


def _batched_forward(net: SageNet, t: GraphTensors, hidden: torch.Tensor):
    """Run ``net`` on ``B = hidden.shape[0]`` disjoint copies of the graph at once (block-diagonal
    batching, PyG-style node offsets); copy ``b`` drops the positive perf edges of the datasets with
    ``hidden[b]`` set. Returns ``(zm [B, M, dim], zd [B, N, dim])``. On a ~70-node graph one pass costs
    about the same for B = 1 or 8 (per-op overhead dominates), so batching buys the masks for free."""
    B, M, N = hidden.shape[0], t.xm.shape[0], t.xd.shape[0]
    sims, goods = [], []
    for b in range(B):
        sims.append(t.sim + b * N)
        keep = ~hidden[b][t.pos[1]] if t.pos.numel() else torch.zeros(0, dtype=torch.bool)
        goods.append(t.pos[:, keep] + torch.tensor([[b * M], [b * N]]))
    zm, zd = net(t.xm.repeat(B, 1), t.xd.repeat(B, 1), torch.cat(sims, 1), torch.cat(goods, 1))
    return zm.reshape(B, M, -1), zd.reshape(B, N, -1)


#: Node rows (copies × nodes) above which :meth:`SageEmbedder.embed_many` with ``need`` runs each copy on
#: its needed nodes' 2-hop neighbourhood instead of the whole graph (the reference's 32 copies of ~70 nodes
#: stay far below, so its embeddings come from the full batch).
LOCAL_ROWS = 200_000


def _local_forward(net: SageNet, t: GraphTensors, hidden: torch.Tensor, need: list, chunk_rows: int) -> list:
    """``net``'s outputs at the needed nodes of each copy, copy ``b`` dropping the positive perf edges of the
    datasets with ``hidden[b]`` set, computed on subgraphs: copy ``b`` keeps only the nodes within 2 hops
    of its needed nodes ``need[b] = (model indices, dataset indices)`` and the edges among them. A layer's
    output at a node reads only its neighbours' previous outputs, so after 2 layers the needed nodes see
    exactly what they see in the whole graph (nodes at distance 2 enter through their encoded inputs
    only). Subgraphs are batched block-diagonally, about ``chunk_rows`` node rows per pass. Returns
    ``[(zm [len(models_b), dim], zd [len(datasets_b), dim])]`` numpy, in ``need``'s order."""
    import scipy.sparse as sp

    M, N = t.xm.shape[0], t.xd.shape[0]
    sim, pos = t.sim.numpy(), t.pos.numpy()
    # one homogeneous adjacency over models [0, M) and datasets [M, M + N): sim (both ways) + positive pairs;
    # hidden edges are kept here (a superset of nodes is harmless) and dropped from each copy's edge list
    src = np.concatenate([sim[0] + M, pos[0], pos[1] + M])
    dst = np.concatenate([sim[1] + M, pos[1] + M, pos[0]])
    A = sp.csr_matrix((np.ones(len(src), dtype=np.int8), (dst, src)), shape=(M + N, M + N))
    hid = hidden.numpy()
    out: list = [None] * len(need)
    batch: list = []

    def run(batch):
        xm, xd, sims, goods, om, od = [], [], [], [], 0, 0
        for b, ms, ds, e_sim, e_pos in batch:
            xm.append(t.xm[ms])
            xd.append(t.xd[ds])
            sims.append(e_sim + od)
            goods.append(e_pos + np.array([[om], [od]]))
            om, od = om + len(ms), od + len(ds)
        cat = lambda es: torch.from_numpy(np.concatenate(es, 1) if es else np.zeros((2, 0), np.int64))  # noqa: E731
        zm, zd = net(torch.cat(xm), torch.cat(xd), cat(sims), cat(goods))
        zm, zd = zm.numpy(), zd.numpy()
        om, od = 0, 0
        for b, ms, ds, _, _ in batch:
            want_m, want_d = need[b]
            out[b] = (zm[om + np.searchsorted(ms, want_m)], zd[od + np.searchsorted(ds, want_d)])
            om, od = om + len(ms), od + len(ds)

    rows = 0
    for b, (want_m, want_d) in enumerate(need):
        nodes = np.union1d(want_m, want_d + M)
        for _ in range(2):
            nodes = np.union1d(nodes, A[nodes].indices)
        ms, ds = nodes[nodes < M], nodes[nodes >= M] - M
        mloc, dloc = np.full(M, -1), np.full(N, -1)
        mloc[ms], dloc[ds] = np.arange(len(ms)), np.arange(len(ds))
        ls = dloc[sim]
        e_sim = ls[:, (ls >= 0).all(0)]
        lp = np.stack([mloc[pos[0]], dloc[pos[1]]])
        e_pos = lp[:, (lp >= 0).all(0) & ~hid[b][pos[1]]] if pos.size else lp
        batch.append((b, ms, ds, e_sim, e_pos))
        rows += len(nodes)
        if rows >= chunk_rows:
            run(batch)
            batch, rows = [], 0
    if batch:
        run(batch)
    return out


# ------------------------------------------------------------------------------------------ node2vec


@dataclass
class Node2VecConfig:
    dim: int = 32
    walk_length: int = 10
    walks_per_node: int = 5
    context: int = 3            # skip-gram window (each side)
    p: float = 1.0              # return parameter: weight 1/p to step back to the previous node
    q: float = 0.5              # in-out parameter: weight 1/q to move away (< 1: explore, DFS-like)
    negatives: int = 5          # negative samples per positive (uniform over nodes)
    epochs: int = 3
    batch: int = 2048
    lr: float = 0.03
    pos_top: int = 3
    pos_score: float = 1.0
    use_data_edges: bool = True


class Node2VecEmbedder:
    """node2vec (Grover & Leskovec 2016) on the sim + positive perf edges, in numpy + torch.

    Walk step from ``v`` (previous node ``t``) to neighbour ``x`` has unnormalised probability
    ``w(v, x) · α(t, x)`` with ``α = 1/p`` if ``x = t``, ``1`` if ``x`` neighbours ``t``, ``1/q`` else;
    ``w`` is the edge weight (cosine for sim edges, clipped at 0.05; 1 for perf edges). Skip-gram:
    maximise ``log σ(⟨e_u, c_v⟩) + Σ_neg log σ(-⟨e_u, c_n⟩)`` over (node, context) pairs of the walks."""

    Config = Node2VecConfig

    def __init__(self, cfg: Node2VecConfig | None = None):
        self.cfg = cfg or Node2VecConfig()
        self.emb: dict[str, np.ndarray] = {}

    def _adjacency(self, graph: MatchingGraph):
        nodes = [f"m:{m}" for m in graph.models] + [f"d:{d}" for d in graph.datasets]
        idx = {n: i for i, n in enumerate(nodes)}
        adj: list[dict[int, float]] = [dict() for _ in nodes]
        if self.cfg.use_data_edges:
            for u, v, a in graph.edges("sim"):
                w = max(float(a["weight"]), 0.05)
                adj[idx[u]][idx[v]] = adj[idx[v]][idx[u]] = w
        for m, d in sorted(positive_pairs(graph, self.cfg.pos_top, self.cfg.pos_score)):
            adj[idx[f"m:{m}"]][idx[f"d:{d}"]] = adj[idx[f"d:{d}"]][idx[f"m:{m}"]] = 1.0
        return nodes, adj

    def walks(self, graph: MatchingGraph, rng: np.random.Generator) -> tuple[list[str], list[list[int]]]:
        cfg = self.cfg
        nodes, adj = self._adjacency(graph)
        nbrs = [np.array(list(a.keys()), dtype=np.int64) for a in adj]
        wts = [np.array(list(a.values()), dtype=np.float64) for a in adj]
        walks = []
        for _ in range(cfg.walks_per_node):
            for start in rng.permutation(len(nodes)):
                walk = [int(start)]
                while len(walk) < cfg.walk_length and len(nbrs[walk[-1]]):
                    v = walk[-1]
                    w = wts[v].copy()
                    if len(walk) > 1:
                        t = walk[-2]
                        back = nbrs[v] == t
                        near = np.isin(nbrs[v], nbrs[t])
                        w *= np.where(back, 1 / cfg.p, np.where(near, 1.0, 1 / cfg.q))
                    walk.append(int(rng.choice(nbrs[v], p=w / w.sum())))
                walks.append(walk)
        return nodes, walks

    def fit(self, graph: MatchingGraph, seed: int = 0) -> "Node2VecEmbedder":
        cfg = self.cfg
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        nodes, walks = self.walks(graph, rng)
        pairs = [(w[i], w[j]) for w in walks for i in range(len(w))
                 for j in range(max(0, i - cfg.context), min(len(w), i + cfg.context + 1)) if j != i]
        pairs = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)
        n = len(nodes)
        emb, ctx = nn.Embedding(n, cfg.dim), nn.Embedding(n, cfg.dim)
        nn.init.normal_(emb.weight, std=0.1)
        nn.init.zeros_(ctx.weight)
        opt = torch.optim.Adam(list(emb.parameters()) + list(ctx.parameters()), lr=cfg.lr, foreach=True)
        for _ in range(cfg.epochs):
            for b in torch.randperm(len(pairs)).split(cfg.batch):
                u, v = pairs[b, 0], pairs[b, 1]
                neg = torch.randint(0, n, (len(b), cfg.negatives))
                eu = emb(u)
                loss = -(F.logsigmoid((eu * ctx(v)).sum(-1)).mean()
                         + F.logsigmoid(-(eu[:, None] * ctx(neg)).sum(-1)).sum(-1).mean())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        w = emb.weight.detach().numpy()
        self.emb = {node: w[i] for i, node in enumerate(nodes)}
        return self

    def embed(self, graph: MatchingGraph, hide=()) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The trained vectors (``hide`` is ignored: a transductive embedding cannot un-see edges).
        Raises ``KeyError`` for a node that was not in the training graph."""
        missing = [m for m in graph.models if f"m:{m}" not in self.emb] + [d for d in graph.datasets if f"d:{d}" not in self.emb]
        if missing:
            raise KeyError(f"node2vec is transductive: refit it on a graph that contains {missing[:5]}")
        return ({m: self.emb[f"m:{m}"] for m in graph.models}, {d: self.emb[f"d:{d}"] for d in graph.datasets})


#: The graph embedders by name (``SelectorConfig.embedding``): a class with a ``Config`` dataclass,
#: ``fit(graph, seed)`` and ``embed(graph, hide) -> ({model: z}, {dataset: z})``.
EMBEDDERS = {"sage": SageEmbedder, "node2vec": Node2VecEmbedder}
