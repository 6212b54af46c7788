"""The ViT, its head and MLP-neuron surgery, token merging and SmoothQuant's rescaling."""
import pytest
import torch

from compresslab import tome, transformer
from compresslab.metrics import count_parameters
from compresslab.models import ViT, build_model
from compresslab.quantization import smoothquant


def small_vit(seed=0, **options):
    """Two blocks of width 32 (4 heads of 8, MLP 48): the real architecture at test size."""
    torch.manual_seed(seed)
    options = dict(dict(dim=32, depth=2, heads=4, head_dim=8, mlp_dims=48), **options)
    model = ViT(**options).eval()
    with torch.no_grad():  # trained-looking LayerNorms: gamma and beta away from 1 and 0
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 2.0)
                m.bias.normal_(0, 0.3)
    return model


def images(n=4, seed=1):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def batches(n=2, size=8):
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(size, 3, 32, 32, generator=g), torch.randint(0, 10, (size,), generator=g)) for _ in range(n)]


def test_vit_shapes_and_parameter_count():
    model = build_model("vit")
    # patches 3*16*192 + 192, positions 64*192, 6 blocks of 297,024, final norm 384, head 1,930
    assert count_parameters(model) == 1_806_154
    assert model.pos.shape == (1, 64, 192) and len(model.blocks) == 6
    assert [b.attn.heads for b in model.blocks] == [6] * 6
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert model.embed(torch.zeros(2, 3, 32, 32)).shape == (2, 64, 192)


def test_vit_per_block_widths_rebuild_a_pruned_model():
    model = ViT(dim=32, depth=2, heads=[4, 2], head_dim=8, mlp_dims=[48, 16])
    assert model.blocks[1].attn.qkv.out_features == 3 * 2 * 8 and model.blocks[1].fc1.out_features == 16
    assert model(images(2)).shape == (2, 10)


def test_head_surgery_equals_the_masked_model():
    model = small_vit()
    keep = [[0, 3], [1, 2, 3]]
    masked, removed = transformer.mask_heads(model, keep), transformer.remove_heads(model, keep)
    x = images()
    assert torch.allclose(removed(x), masked(x), atol=1e-5)
    assert not torch.allclose(masked(x), model(x), atol=1e-3)  # the mask does something
    # each removed head: 3 * 8 rows of qkv (weights + biases) and 8 columns of proj
    assert count_parameters(model) - count_parameters(removed) == 3 * (3 * 8 * 33 + 8 * 32)
    assert [b.attn.heads for b in removed.blocks] == [2, 3]
    assert [b.attn.heads for b in model.blocks] == [4, 4]  # the original is untouched


def test_neuron_surgery_equals_the_masked_model():
    model = small_vit()
    keep = [list(range(0, 48, 2)), [5, 7, 40]]
    x = images()
    removed = transformer.remove_neurons(model, keep)
    assert torch.allclose(removed(x), transformer.mask_neurons(model, keep)(x), atol=1e-5)
    assert [b.fc1.out_features for b in removed.blocks] == [24, 3]
    assert count_parameters(model) - count_parameters(removed) == (24 + 45) * (32 + 1 + 32)


def test_keep_lists_are_checked():
    model = small_vit()
    with pytest.raises(ValueError, match="one list of heads per block"):
        transformer.remove_heads(model, [[0]])
    with pytest.raises(ValueError, match="Block 1.*distinct heads in 0..3"):
        transformer.remove_heads(model, [[0], [4]])
    with pytest.raises(ValueError, match="at least one"):
        transformer.remove_neurons(model, [[0], []])


def test_gate_importance_is_the_gradient_of_the_loss_wrt_a_head_gate():
    model = small_vit()
    scores = transformer.gate_importance(model, batches(), "heads", batches=2, normalize=False)
    assert [s.shape for s in scores] == [(4,), (4,)]
    # by hand for block 0, head 2: d loss / d gate at gate = 1, |.| summed over the batches
    expected = 0.0
    for x, y in batches():
        gate = [torch.ones(4, requires_grad=True), torch.ones(4)]
        with transformer.gates(model, heads=gate):
            torch.nn.functional.cross_entropy(model(x), y).backward()
        expected += gate[0].grad[2].abs().item()
    assert scores[0][2].item() == pytest.approx(expected, rel=1e-4)
    normalized = transformer.gate_importance(model, batches(), "neurons", batches=2)
    assert [s.shape for s in normalized] == [(48,), (48,)]
    assert all(s.norm().item() == pytest.approx(1.0) for s in normalized)
    assert all(not b.attn.proj._forward_pre_hooks for b in model.blocks)  # the gates are gone


def test_lowest_globally_removes_the_lowest_but_keeps_one_per_block():
    scores = [torch.tensor([0.1, 0.9, 0.2]), torch.tensor([0.05, 0.01, 0.8])]
    assert transformer.lowest_globally(scores, 0.5) == [[1, 2], [2]]  # 0.01, 0.05, 0.1 go
    assert transformer.lowest_globally(scores, 4 / 6) == [[1], [2]]
    assert transformer.lowest_globally(scores, 1.0) == [[1], [2]]  # never a block without heads
    assert transformer.lowest_globally(scores, 0.0) == [[0, 1, 2], [0, 1, 2]]
    keep = transformer.random_keep([6, 6], 0.25, seed=0)
    assert sum(len(k) for k in keep) == 9
    with pytest.raises(ValueError, match="fraction"):
        transformer.lowest_globally(scores, 1.5)


def test_tome_with_r_zero_is_the_vit():
    model = small_vit()
    assert torch.allclose(tome.ToMe(model, 0)(images()), model(images()), atol=1e-6)


def test_tome_merges_r_tokens_per_block_and_at_most_half():
    model = small_vit(depth=4)
    merged = tome.ToMe(model, 8)
    assert merged(images()).shape == (4, 10)
    assert merged.tokens == [56, 48, 40, 32]
    wide = tome.ToMe(model, 40)
    wide(images())
    assert wide.tokens == [32, 16, 8, 4]  # at most half of the tokens left in each block
    with pytest.raises(ValueError, match="r .tokens merged per block."):
        tome.ToMe(model, -1)


def test_merging_averages_by_size_and_keeps_the_total():
    """Two equal tokens merge first; the merged token is the size-weighted mean; sizes add up."""
    x = torch.randn(1, 6, 4)
    x[0, 1] = x[0, 0]  # token 0 (set A) and token 1 (set B) are identical
    size = torch.tensor([[1.0, 3.0, 1.0, 1.0, 2.0, 1.0]])
    merged, new_size = tome.merge_tokens(x, size, x[:, None], r=1)  # keys = x, one head
    assert merged.shape == (1, 5, 4) and new_size.sum() == size.sum()
    assert (new_size == 4.0).sum() == 1  # token 0 (size 1) went into token 1 (size 3)
    assert torch.allclose((merged * new_size[..., None]).sum(1), (x * size[..., None]).sum(1), atol=1e-6)


def test_proportional_attention_counts_a_merged_token_as_its_copies():
    """Attention over [a, a, b] equals attention over [a (size 2), b] for every query."""
    attn = small_vit().blocks[0].attn
    a, b = torch.randn(1, 1, 32), torch.randn(1, 1, 32)
    full = attn(torch.cat([a, a, b], 1))
    merged = attn(torch.cat([a, b], 1), size=torch.tensor([[2.0, 1.0]]))
    assert torch.allclose(full[:, 1:], merged, atol=1e-5)


def test_smoothquant_rescaling_is_exact_in_float():
    model = small_vit()
    smoothed = smoothquant.smooth_quant(model, batches(), alpha=0.5, batches=2)
    x = images()
    assert torch.allclose(smoothed(x), model(x), atol=1e-5)
    assert not torch.equal(smoothed.blocks[0].fc1.weight, model.blocks[0].fc1.weight)
    # after smoothing, max|X_j| / s_j and max|W_j| * s_j meet at alpha = 0.5: equal per channel
    pairs = smoothquant.norm_linear_pairs(smoothed)
    after = smoothquant.input_absmax(smoothed, {n: lin for n, (_, lin) in pairs.items()}, batches(), 2)
    w = smoothed.blocks[0].fc1.weight.abs().amax(0)
    assert torch.allclose(after["blocks.0.fc1"], w, rtol=1e-4)


def test_smoothing_scales_formula_and_alpha_check():
    act, w = torch.tensor([4.0, 1.0]), torch.tensor([[1.0, -2.0], [0.5, 0.25]])
    s = smoothquant.smoothing_scales(act, w, alpha=0.5)
    assert torch.allclose(s, torch.tensor([4.0 ** 0.5 / 1.0 ** 0.5, 1.0 / 2.0 ** 0.5]))
    assert torch.allclose(smoothquant.smoothing_scales(act, w, alpha=1.0), act)
    with pytest.raises(ValueError, match="alpha"):
        smoothquant.smoothing_scales(act, w, alpha=1.5)


def test_op_families_of_the_flop_counter_add_up_to_the_total():
    from compresslab import costs, metrics
    model = small_vit()
    by_family = costs.op_flops(model, batch_size=2)
    assert by_family.sum() == metrics.flops(model, (3, 32, 32), batch_size=2)
    # attention matmuls: 2 * 2 N^2 H d per block and image (64 tokens, 4 heads of 8, 2 blocks)
    assert by_family["attention matmuls"] == 2 * 2 * (2 * 2 * 64 * 64 * 4 * 8)
    assert by_family["softmax"] == by_family["LayerNorm"] == 0   # the counter counts products only


def test_op_times_cover_the_families_and_name_unknown_operators_other():
    from compresslab import costs
    assert costs.family_of("aten::addmm") == "linears" and costs.family_of("aten.bmm.default") == "attention matmuls"
    assert costs.family_of("aten::native_layer_norm") == "LayerNorm" and costs.family_of("aten::add") == costs.ORDER[-1]
    times = costs.op_times(small_vit(), batch_size=2, repeats=2)
    assert list(times.index) == costs.ORDER and (times >= 0).all()
    assert times["linears"] > 0 and times["softmax"] > 0 and times["GELU"] > 0


def test_quantize_ops_puts_quantizers_where_each_family_says():
    from compresslab.quantization import activation_quantizers, calibrate, transformer_ops as ops
    model = small_vit()
    counts = {}
    for family in ops.FAMILIES:
        q = ops.quantize_ops(model, [family])
        counts[family] = len(activation_quantizers(q))
        calibrate(q, batches(2), batches=2)
        out = q(images())
        assert out.shape == (4, 10) and torch.isfinite(out).all()
        assert not torch.equal(out, model(images())), f"{family}: quantizing changed nothing"
    # 2 blocks: linear = patch conv + 4 per block + head; matmuls and softmax one per block;
    # LayerNorm inputs two per block + the final norm; GELU one per block
    assert counts == {"linear": 10, "attention matmuls": 2, "softmax": 2, "layernorm": 5, "gelu": 2}
    assert not activation_quantizers(model), "the original model must stay float"
    with pytest.raises(ValueError, match="family"):
        ops.quantize_ops(model, ["batchnorm"])


def test_eight_bit_ops_stay_close_and_capture_records_inputs_and_outputs():
    from compresslab.quantization import calibrate, transformer_ops as ops
    model = small_vit()
    q = calibrate(ops.quantize_ops(model, ops.FAMILIES, bits=8), batches(2), batches=2)
    with torch.no_grad():
        assert (q(images()) - model(images())).abs().max() < 0.2 * model(images()).abs().max()
    got = ops.capture(model, {"fc1": model.blocks[0].fc1, "p": model.blocks[0].attn.softmax}, batches(2), batches=2)
    assert got["fc1"].shape == (2 * 8 * 64, 32)                     # (images x tokens, channels)
    p = ops.capture(model, {"p": model.blocks[0].attn.softmax}, batches(2), batches=1, output=True)["p"]
    assert p.shape == (8 * 4 * 64, 64) and torch.allclose(p.sum(1), torch.ones(len(p)), atol=1e-5)
    x = torch.ones(10, 4)
    x[:, 2] = 30.0
    assert ops.outlier_ratio(x) == pytest.approx(30.0) and ops.channel_ranges(x).tolist() == [1, 1, 30, 1]
