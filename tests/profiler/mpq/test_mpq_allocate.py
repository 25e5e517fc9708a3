"""The bit-allocation integer program: budgets, bit sets, pinned layers, infeasible budgets."""
import numpy as np
import pytest

from profiler.mpq.allocate import (A_CHOICES, W_CHOICES, Budget, InfeasibleBudgetError, allocate, average_bits,
                                   check_budget, layer_weight_bytes, plan_bops, plan_weight_bytes)
from profiler.mpq.capture import LayerInfo
from profiler.mpq.profile import mpq_values, quant_noise


def make_layers(n=24, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        o, k = (int(v) for v in rng.integers(4, 96, 2))
        out.append(LayerInfo(f"block{i}.proj", "linear", (o, k), o, o * k, o * k * int(rng.integers(1, 64)), o,
                             role="input" if i == 0 else "output" if i == n - 1 else ""))
    return out


@pytest.fixture
def layers():
    return make_layers()


def values_for(layers, seed=1):
    theta = np.random.default_rng(seed).random(len(layers))
    return mpq_values(theta)


@pytest.mark.parametrize("avg", [2.5, 3.0, 4.0, 5.5])
@pytest.mark.parametrize("storage", ["nominal", "packed"])
def test_plan_respects_budgets_and_bit_sets(layers, avg, storage):
    budget = Budget.from_avg_bits(layers, avg)
    if storage == "packed":  # a byte budget: packed storage of 4 bits costs what 2 and 3 bits do
        mem = plan_weight_bytes(layers, [4] * len(layers), "packed") * (1 + (avg - 2.5) / 4)
        budget = Budget.from_bytes(layers, mem)
    al = allocate(layers, values_for(layers), budget)
    assert set(al.w_bits) <= set(W_CHOICES) and set(al.a_bits) <= set(A_CHOICES)
    assert plan_weight_bytes(layers, al.w_bits, storage) == pytest.approx(al.weight_bytes)
    assert al.weight_bytes <= budget.weight_bytes
    assert plan_bops(layers, al.w_bits, al.a_bits) <= budget.bops
    if storage == "nominal":
        assert average_bits(layers, al.w_bits) <= avg + 1e-9


def test_custom_choices_and_pins(layers):
    budget = Budget.from_avg_bits(layers, 4.0)
    ws, as_ = (3, 4, 8), (8, 16)
    vals = mpq_values(np.ones(len(layers)), ws, as_)
    pinned = {0: (8, 8), len(layers) - 1: (8, 8)}
    al = allocate(layers, vals, budget, ws, as_, pinned)
    assert set(al.w_bits) <= set(ws) and set(al.a_bits) <= set(as_)
    assert (al.w_bits[0], al.a_bits[0]) == (8, 8) and (al.w_bits[-1], al.a_bits[-1]) == (8, 8)
    with pytest.raises(ValueError, match="not among the choices"):
        allocate(layers, vals, budget, ws, as_, {0: (6, 8)})
    with pytest.raises(ValueError, match="shape"):
        allocate(layers, vals[:, :2], budget, ws, as_)
    with pytest.raises(ValueError, match="integers in 2..8"):
        allocate(layers, np.ones((len(layers), 2, 2)), budget, (1, 4), as_)


def test_solver_is_optimal_on_a_small_instance():
    """Brute force over all assignments of 3 layers agrees with the integer program."""
    import itertools

    layers = make_layers(3, seed=4)
    vals = values_for(layers, seed=5)
    budget = Budget.from_avg_bits(layers, 3.5)
    pairs = [(w, a) for w in W_CHOICES for a in A_CHOICES]
    best = -np.inf
    for combo in itertools.product(range(len(pairs)), repeat=3):
        wb = [pairs[c][0] for c in combo]
        ab = [pairs[c][1] for c in combo]
        if plan_weight_bytes(layers, wb) <= budget.weight_bytes and plan_bops(layers, wb, ab) <= budget.bops:
            best = max(best, sum(vals[i, W_CHOICES.index(w), A_CHOICES.index(a)] for i, (w, a) in enumerate(zip(wb, ab))))
    al = allocate(layers, vals, budget)
    assert al.objective == pytest.approx(best, rel=1e-6, abs=1e-12)


def test_higher_importance_gets_no_fewer_bits():
    """Two identical layers: much more importance buys more precision; equal importance splits evenly."""
    layers = [LayerInfo(f"l{i}", "linear", (64, 64), 64, 4096, 4096 * 16, 64) for i in range(2)]
    budget = Budget.from_avg_bits(layers, 4.0)
    al = allocate(layers, mpq_values(np.array([1.0, 1e-3])), budget)
    assert al.w_bits[0] > 4 > al.w_bits[1]
    al = allocate(layers, mpq_values(np.array([1.0, 1.0])), budget)
    assert al.w_bits == [4, 4]


def test_infeasible_memory_budget_states_the_smallest(layers):
    smallest = sum(layer_weight_bytes(i, 2) for i in layers)
    with pytest.raises(InfeasibleBudgetError, match=f"smallest feasible budget .* is {smallest:,.0f}") as e:
        allocate(layers, values_for(layers), Budget(weight_bytes=smallest - 1, bops=None))
    assert e.value.min_weight_bytes == pytest.approx(smallest)
    # exactly the minimum is feasible: every layer at 2 bits
    al = allocate(layers, values_for(layers), Budget(weight_bytes=smallest, bops=None))
    assert al.w_bits == [2] * len(layers)
    # a budget given in average bits is also answered in average bits
    with pytest.raises(InfeasibleBudgetError, match=r"budget 1.5 average weight bits = .* \(= 2.00 average weight bits\)"):
        check_budget(layers, Budget.from_avg_bits(layers, 1.5))


def test_infeasible_bops_budget_and_pins(layers):
    min_bops = sum(i.macs * 2 * 4 for i in layers)
    big = Budget(weight_bytes=1e12, bops=min_bops * 0.99)
    with pytest.raises(InfeasibleBudgetError, match="bit-operations budget") as e:
        check_budget(layers, big)
    assert e.value.min_bops == pytest.approx(min_bops)
    # pinning raises the minimum: the error counts the pinned layers at their bits
    pinned = {0: (8, 8)}
    smallest = sum(layer_weight_bytes(i, 2) for i in layers[1:]) + layer_weight_bytes(layers[0], 8)
    with pytest.raises(InfeasibleBudgetError) as e:
        check_budget(layers, Budget(weight_bytes=smallest - 1), pinned=pinned)
    assert e.value.min_weight_bytes == pytest.approx(smallest)


def test_budget_validation_and_storage_models(layers):
    with pytest.raises(ValueError, match="positive number of bytes"):
        Budget(weight_bytes=0)
    with pytest.raises(ValueError, match="storage"):
        Budget(weight_bytes=10, storage="zip")
    with pytest.raises(ValueError, match="1..32"):
        Budget.from_avg_bits(layers, 0.5)
    info = layers[0]
    k = info.n_weights // info.out_channels
    # packed: 2-4 bit codes two per byte (per row), 5-8 bits a byte; 9 bytes of scales per output channel
    assert layer_weight_bytes(info, 3, "packed") == info.out_channels * ((k + 1) // 2 + 9)
    assert layer_weight_bytes(info, 6, "packed") == info.out_channels * (k + 9)
    assert layer_weight_bytes(info, 3, "nominal") == info.n_weights * 3 / 8 + 9 * info.out_channels
    # a uniform plan at B bits costs exactly the from_avg_bits budget (memory and BOPs)
    b = Budget.from_avg_bits(layers, 4, a_bits=8)
    assert plan_weight_bytes(layers, [4] * len(layers)) == pytest.approx(b.weight_bytes)
    assert plan_bops(layers, [4] * len(layers), [8] * len(layers)) == pytest.approx(b.bops)


def test_pinned_choice_survives_when_another_choice_dominates_it():
    """Under the "bits" objective W4A16 is as good as W8A8 and cheaper; a layer pinned at W8A8 keeps it."""
    layers = make_layers(6, seed=2)
    vals = mpq_values(np.ones(len(layers)), objective="bits")
    al = allocate(layers, vals, Budget.from_avg_bits(layers, 3.5), pinned={0: (8, 8), 5: (8, 8)})
    assert (al.w_bits[0], al.a_bits[0]) == (8, 8) == (al.w_bits[5], al.a_bits[5])


def test_noise_values_prefer_more_bits():
    v = mpq_values(np.array([1.0]))[0]
    assert (np.diff(v, axis=0) > 0).all() and (np.diff(v, axis=1) > 0).all()
    assert quant_noise(2) == 1.0 and quant_noise(8) == pytest.approx(1 / 127**2)
    with pytest.raises(ValueError, match="objective"):
        mpq_values(np.ones(2), objective="magic")
