"""BitPlan JSON round trip, validation, and applying a plan with finetune.quant."""
import json

import pytest
import torch
from torch import nn

from finetune.quant import QuantConv2d, QuantLinear, quantize_, quantized_weight_bytes
from profiler.mpq.bitplan import BitPlan, BitPlanError, apply_bitplan
from profiler.mpq.plot import plot_bitplan


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 8, 3, padding=1), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 16), nn.SiLU(), nn.Linear(16, 4))


def make_plan():
    return BitPlan(
        layers={"0": {"w_bits": 8, "a_bits": 8}, "2": {"w_bits": 3, "a_bits": 6},
                "4": {"w_bits": 2, "a_bits": 16}, "6": {"w_bits": 8, "a_bits": 8}},
        budget={"weight_bytes": 1234.0, "bops": 5.6e6, "storage": "nominal", "avg_bits": 4.0},
        usage={"weight_bytes": 1200.5, "avg_bits": 3.9, "bops": 5.5e6},
        importance={"0": 1.0, "2": 0.25, "4": 0.125, "6": 0.5},
        act_ranges={"0": 1.0, "2": 2.5, "4": 3.0, "6": 1.5},
        layer_info={"0": {"kind": "conv2d", "n_weights": 216}},
        settings={"allocator": "mpq", "timesteps": [50, 550], "alpha": 0.0},
        timing={"solve_s": 0.1})


def test_round_trip(tmp_path):
    plan = make_plan()
    path = plan.save(tmp_path / "sub" / "plan.json")
    back = BitPlan.load(path)
    assert back == plan
    assert list(back.layers) == ["0", "2", "4", "6"]  # execution order survives
    d = json.loads(path.read_text())
    assert d["format"] == "mandc.bitplan" and d["version"] == 1
    assert not list(tmp_path.glob("sub/*.tmp"))  # written atomically
    assert plan.bits_histogram() == {"w": {2: 1, 3: 1, 8: 2}, "a": {6: 1, 8: 2, 16: 1}}


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(format="other"), "not a mandc bit plan"),
    (lambda d: d.update(version=99), "version 99"),
    (lambda d: d["layers"].update({"2": {"w_bits": 9, "a_bits": 8}}), "layer '2' has w_bits 9"),
    (lambda d: d["layers"].update({"2": {"w_bits": 4, "a_bits": 1}}), "layer '2' has a_bits 1"),
    (lambda d: d["layers"].update({"2": {"bits": 4}}), "layer '2' must map"),
    (lambda d: d.update(layers={}), "non-empty"),
    (lambda d: d.update(budget=[1, 2]), "'budget' must be an object"),
])
def test_bad_files_name_the_problem(tmp_path, edit, match):
    d = make_plan().to_dict()
    edit(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(BitPlanError, match=match):
        BitPlan.load(path)


def test_missing_and_invalid_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BitPlan.load(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text("{oops")
    with pytest.raises(BitPlanError, match="not valid JSON"):
        BitPlan.load(tmp_path / "x.json")


def test_quantize_reads_the_file_and_apply_sets_activation_scales(tmp_path):
    plan = make_plan()
    path = plan.save(tmp_path / "plan.json")
    x = torch.randn(2, 3, 4, 4)

    net = quantize_(small_net(), plan=str(path))  # finetune reads the "layers" key of the same file
    assert [type(m) for m in net if isinstance(m, (QuantLinear, QuantConv2d))] == [QuantConv2d, QuantConv2d, QuantLinear, QuantLinear]

    ref = small_net()
    q = small_net()
    summary = apply_bitplan(q, plan)
    assert [q[i].bits for i in (0, 2, 4, 6)] == [8, 3, 2, 8]
    assert [q[i].a_bits for i in (0, 2, 4, 6)] == [8, 6, 16, 8]
    assert q[0].symmetric
    assert float(q[2].a_scale) == pytest.approx(2.5 / 31)  # act_ranges / (2^(a-1) - 1)
    assert summary.bytes_after == quantized_weight_bytes(q) < summary.bytes_before
    with torch.no_grad():
        assert (q(x) - ref(x)).abs().max() < 10 * ref(x).abs().max()  # runs, finite
        assert torch.isfinite(q(x)).all()


def test_apply_rejects_a_plan_for_another_model():
    plan = BitPlan(layers={"encoder.conv": {"w_bits": 4, "a_bits": 8}})
    with pytest.raises(BitPlanError, match="lacks"):
        apply_bitplan(small_net(), plan)


def test_plot_writes_a_png(tmp_path):
    path = plot_bitplan(make_plan(), tmp_path / "plan.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
