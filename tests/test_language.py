"""The language-model building blocks: the causal GPT, the character corpus, weight-only
quantization (RTN, GPTQ), number formats (NF4, FP8, MX) and one-shot pruning (Wanda, SparseGPT)."""
import hashlib
import math

import pytest
import torch

from compresslab import llm_pruning as lp
from compresslab import text
from compresslab.models import build_model
from compresslab.quantization import formats, gptq
from compresslab.quantization import weight_only as wo

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40


def small_gpt(vocab=30, seed=0):
    return build_model("char_gpt", seed=seed, vocab_size=vocab, context=16, dim=32, depth=2, heads=2,
                       head_dim=16, mlp_dim=64).eval()


def test_gpt_shapes_and_default_size():
    gpt = build_model("char_gpt", seed=0)
    assert gpt(torch.zeros(2, 128, dtype=torch.long)).shape == (2, 128, 65)
    n = sum(p.numel() for p in gpt.parameters())
    assert 1e6 <= n <= 3e6, n          # the 1-3 M parameters
    with pytest.raises(ValueError, match="At most 128 characters"):
        gpt(torch.zeros(1, 129, dtype=torch.long))


def test_gpt_is_causal():
    # changing a later character must not change any earlier position's logits
    gpt = small_gpt()
    ids = torch.randint(0, 30, (1, 16), generator=torch.Generator().manual_seed(0))
    other = ids.clone()
    other[0, 10] = (other[0, 10] + 1) % 30
    a, b = gpt(ids), gpt(other)
    assert torch.allclose(a[0, :10], b[0, :10], atol=1e-6)
    assert not torch.allclose(a[0, 10:], b[0, 10:], atol=1e-4)


def test_corpus_encode_decode_split_and_windows():
    c = text.CharCorpus(TEXT)
    assert c.decode(c.encode("Speak, speak.")) == "Speak, speak."
    assert len(c.split("train")) + len(c.split("val")) == len(TEXT)
    x, y = c.windows("val", 8)
    assert x.shape == y.shape and x.shape[1] == 8
    assert torch.equal(x[0, 1:], y[0, :-1]) and torch.equal(x[1, 0], y[0, -1])   # consecutive windows
    with pytest.raises(ValueError, match="not in the"):
        c.encode("Z")
    with pytest.raises(ValueError, match="Unknown split"):
        c.split("test")


def test_window_loader_is_repeatable_and_shifted():
    c = text.CharCorpus(TEXT)
    loader = c.loader("train", 4, 8, batches=3, seed=1)
    first = [x for x, _ in loader]
    loader.set_epoch(0)
    again = [x for x, _ in loader]
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and len(first) == len(loader) == 3
    x, y = next(iter(c.loader("train", 4, 8, batches=1)))
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_calibration_windows_are_the_same_training_windows_at_every_call():
    c = text.CharCorpus(TEXT)
    a, b = text.calibration_windows(c, 8, batches=3), text.calibration_windows(c, 8, batches=3)
    assert len(a) == 3 and a[0][0].shape == (32, 8)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    train = c.split("train").tolist()
    row = a[0][0][0].tolist()                       # a window of the training text
    assert any(train[i:i + 8] == row for i in range(len(train) - 8))
    assert torch.equal(text.calibration_windows(c, 8, batches=2)[1][0], a[1][0])  # a prefix of the same draw


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    c = text.CharCorpus(TEXT)
    gpt = small_gpt(c.vocab_size)
    with torch.no_grad():
        gpt.head.weight.zero_()
        gpt.head.bias.zero_()
    assert text.perplexity(gpt, c) == pytest.approx(c.vocab_size, rel=1e-5)
    assert text.nats_per_char(gpt, c) == pytest.approx(math.log(c.vocab_size), rel=1e-5)


def test_generate_extends_the_prompt_and_is_seeded():
    c = text.CharCorpus(TEXT)
    gpt = small_gpt(c.vocab_size)
    a = text.generate(gpt, c, "All:", 20, seed=3)
    assert a.startswith("All:") and len(a) == 24 and a == text.generate(gpt, c, "All:", 20, seed=3)


def test_committed_corpus_loads_offline_and_is_the_documented_text():
    """data/text/shakespeare.txt is in git (no download), byte for byte what data/text/README.md
    says it is, split at 90%."""
    path = text.TEXT_DIR / text.CORPORA["shakespeare"]
    readme = (text.TEXT_DIR / "README.md").read_text()
    assert hashlib.sha256(path.read_bytes()).hexdigest() in readme
    c = text.load_text("shakespeare")
    assert c.vocab_size == 83 and len(c.split("train")) == 4_365_406 and len(c.split("val")) == 485_046
    assert c.decode(c.split("train")[:6]) == "ALL'S " and "HAMLET, PRINCE OF DENMARK" in c.decode(c.split("train"))


def test_load_text_errors():
    with pytest.raises(ValueError, match="Unknown corpus"):
        text.load_text("wikitext")


def test_rtn_groups_and_bits_per_weight():
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    for bits in (3, 4):
        for g in (16, 32, 64):
            w_hat = wo.rtn_quantize(w, bits, g)
            levels = [len(torch.unique(grp)) for grp in w_hat.reshape(-1, g)]
            assert max(levels) <= 2 ** bits
            # each group's error is at most half its own step
            groups, err = w.reshape(-1, g), (w - w_hat).reshape(-1, g).abs().amax(1)
            step = (groups.amax(1).clamp(min=0) - groups.amin(1).clamp(max=0)) / (2 ** bits - 1)
            assert (err <= step / 2 + 1e-6).all()
    # smaller groups follow the weights more closely
    assert wo.weight_error(w, wo.rtn_quantize(w, 3, 16)) < wo.weight_error(w, wo.rtn_quantize(w, 3, 64))
    assert wo.bits_per_weight(3, 128) == pytest.approx(3 + 19 / 128)
    assert wo.bits_per_weight(4, 128) == pytest.approx(4.15625)
    with pytest.raises(ValueError, match="divisor"):
        wo.rtn_quantize(w, 4, 48)


def calibration(n=512, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    # correlated inputs with a few loud channels, as a transformer's linear layers see them
    x = torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g) * 0.3
    x[:, :4] *= 8
    return x


def test_gptq_beats_rtn_on_the_layer_output():
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    x = calibration()
    for bits, g in [(4, 64), (3, 32)]:
        rtn = wo.output_error(w, wo.rtn_quantize(w, bits, g), x)
        ours = wo.output_error(w, gptq.gptq_quantize(w, gptq.hessian(x), bits, g, block_size=32), x)
        assert ours < 0.7 * rtn, (bits, g, ours, rtn)


def test_gptq_output_lies_on_each_groups_grid():
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(2))
    w_hat = gptq.gptq_quantize(w, gptq.hessian(calibration()), 3, 32, block_size=32)
    assert max(len(torch.unique(grp)) for grp in w_hat.reshape(-1, 32)) <= 8


def test_gptq_model_quantizes_only_block_linears():
    c = text.CharCorpus(TEXT)
    gpt = small_gpt(c.vocab_size)
    q = gptq.gptq_model(gpt, c.loader("train", 8, 16, batches=2), bits=4, group_size=32, batches=2)
    assert torch.equal(q.head.weight, gpt.head.weight) and torch.equal(q.tok.weight, gpt.tok.weight)
    fc1 = q.blocks[0].fc1.weight
    assert not torch.equal(fc1, gpt.blocks[0].fc1.weight)
    assert max(len(torch.unique(grp)) for grp in fc1.reshape(-1, 32)) <= 16


def test_nf4_levels_match_qlora():
    # bitsandbytes' NF4 table (QLoRA, Appendix E)
    table = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
             -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
             0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
             0.7229568362236023, 1.0]
    assert torch.allclose(formats.nf4_levels(), torch.tensor(table), atol=1e-5)


def test_formats_round_to_their_grids():
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(3))
    nf4 = formats.nf4_quantize(w, 64, double_quant=False)
    for row, out in zip(w.reshape(-1, 64), nf4.reshape(-1, 64)):
        assert set((out / row.abs().max()).round(decimals=4).tolist()) <= set(formats.nf4_levels().round(decimals=4).tolist())
    # double quantization changes the scales only a little
    assert wo.weight_error(w, formats.nf4_quantize(w)) < 1.05 * wo.weight_error(w, nf4) + 1e-4
    # FP8: the cast's grid; E4M3 has more mantissa than E5M2, so it is closer
    assert wo.weight_error(w, formats.fp8_quantize(w, "e4m3")) < wo.weight_error(w, formats.fp8_quantize(w, "e5m2"))
    # MXFP4: every element is a power-of-two scale times an E2M1 level
    mx = formats.mx_quantize(w, "fp4").reshape(-1, 32)
    levels = torch.cat([-formats.FP4_E2M1, formats.FP4_E2M1])
    blocks = w.reshape(-1, 32)
    scale = torch.exp2(torch.floor(torch.log2(blocks.abs().amax(1, keepdim=True))) - 2)
    assert torch.isin(mx / scale, levels).all()
    # NF4 suits normal weights better than int4 with the same blocks
    assert wo.weight_error(w, nf4) < wo.weight_error(w, formats.absmax_quantize(w, formats.int_levels(4), 64))


def test_nm_and_row_masks():
    s = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.5, 0.1, 0.2, 0.3]])
    assert lp.nm_mask(s, 2, 4).tolist() == [[True, False, True, False, True, False, False, True]]
    assert lp.row_mask(s, 0.5).tolist() == [[True, True, True, True, False, False, False, False]]
    with pytest.raises(ValueError, match="N:M"):
        lp.nm_mask(s, 3, 3)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        lp.row_mask(s, 1.5)


def test_wanda_weighs_by_input_norm():
    w = torch.tensor([[1.0, 2.0]])
    x = torch.tensor([[10.0, 1.0], [10.0, 1.0]])
    assert lp.row_mask(lp.wanda_scores(w, x), 0.5).tolist() == [[True, False]]   # magnitude would keep 2.0


def test_sparsegpt_reconstructs_better_than_masking():
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(4))
    x = calibration()
    h = gptq.hessian(x)
    for nm in (None, (2, 4)):
        pruned = lp.sparsegpt_prune(w, h, 0.5, nm, block_size=32)
        assert (pruned == 0).float().mean() == pytest.approx(0.5, abs=0.01)
        if nm is not None:
            assert ((pruned.reshape(32, 16, 4) != 0).sum(2) <= 2).all()
        masked = w * (lp.nm_mask(w.abs(), 2, 4) if nm else lp.row_mask(w.abs(), 0.5))
        assert wo.output_error(w, pruned, x) < 0.8 * wo.output_error(w, masked, x)


def test_prune_llm_sparsity_and_errors():
    c = text.CharCorpus(TEXT)
    gpt = small_gpt(c.vocab_size)
    calib = c.loader("train", 8, 16, batches=2)
    for method in lp.METHODS:
        pruned = lp.prune_llm(gpt, method, 0.5, loader=calib, batches=2)
        assert lp.sparsity_of(pruned) == pytest.approx(0.5, abs=0.01)
        assert torch.equal(pruned.head.weight, gpt.head.weight)
    assert lp.sparsity_of(lp.prune_llm(gpt, "wanda", nm=(2, 4), loader=calib, batches=2)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="Unknown method"):
        lp.prune_llm(gpt, "obs")
    with pytest.raises(ValueError, match="calibration"):
        lp.prune_llm(gpt, "wanda")


def test_awq_salient_channels_scales_and_search():
    from compresslab.quantization import awq
    g = torch.Generator().manual_seed(5)
    w = torch.randn(64, 256, generator=g)
    x = calibration(1024, 256, seed=5)
    salient = awq.salient_channels(x, 0.01)
    assert len(salient) == 3 and set(salient.tolist()) <= {0, 1, 2, 3}      # the loud channels
    rtn = wo.output_error(w, wo.rtn_quantize(w, 3, 128), x)
    kept = wo.output_error(w, awq.keep_channels(w, salient, 3, 128), x)
    random = wo.output_error(w, awq.keep_channels(w, torch.tensor([100, 150, 200]), 3, 128), x)
    assert kept < 0.8 * random and random > 0.9 * rtn
    # scaling is exact in float: Q = identity gives back W
    s = awq.awq_scales(x, 0.5)
    assert torch.allclose((w * s) / s, w, atol=1e-6) and s.max() * s.min() == pytest.approx(1.0, rel=1e-5)
    alpha, errors = awq.search_alpha(w, x, 3, 128, grid=10)
    assert errors[0.0] == pytest.approx(rtn, rel=1e-5) and alpha > 0 and errors[alpha] < 0.8 * rtn


def test_nats_per_window_averages_to_nats_per_char_and_starts_where_asked():
    c, model = text.CharCorpus(TEXT), small_gpt()
    c.splits["val"] = c.encode(TEXT[:800])
    per = text.nats_per_window(model, c, "val")
    assert per.shape == ((800 - 1) // model.context,)
    assert text.nats_per_char(model, c, "val") == pytest.approx(float(per.mean()), rel=1e-6)
    assert torch.allclose(text.nats_per_window(model, c, "val", limit=5, start=3), per[3:8])


def test_kv_cache_bytes_and_int8_rounding_of_keys_and_values_only():
    from compresslab.quantization import kv_cache
    model = small_gpt()
    assert kv_cache.kv_bytes_per_token(model, 16) == 2 * 2 * 2 * 16 * 2          # k and v, 2 blocks, 2 x 16, fp16
    assert kv_cache.kv_bytes_per_token(build_model("char_gpt", vocab_size=83), 32) == 2 * 6 * 192 * 4
    ids = torch.randint(0, 30, (2, 16))
    seen = {}
    q8 = kv_cache.quantize_kv(model, 8)
    q8.blocks[0].attn.qkv.register_forward_hook(lambda m, a, out: seen.update(out=out))   # runs after the rounding
    handle = model.blocks[0].attn.qkv.register_forward_hook(lambda m, a, out: seen.update(plain=out))
    with torch.no_grad():
        ref, got = model(ids), q8(ids)
        handle.remove()
        rough = kv_cache.quantize_kv(model, 2)(ids)
    q, kv = seen["out"][..., :32], seen["out"][..., 32:].unflatten(-1, (2, 2, 16))
    assert torch.allclose(q, seen["plain"][..., :32])                             # queries untouched
    steps = kv / (kv.abs().amax(-1, keepdim=True) / 127)
    assert torch.allclose(steps, steps.round(), atol=1e-3)                         # k, v on a 255-level grid per vector
    assert (got - ref).abs().max() < (rough - ref).abs().max()


@pytest.mark.slow
def test_onnx_export_matches_pytorch_and_int4_is_matmulnbits(tmp_path):
    from compresslab import deploy, llm_deploy
    model = small_gpt()
    fp32 = llm_deploy.export_lm(model, tmp_path / "m.onnx")
    ids = torch.randint(0, 30, (3, 11))
    assert torch.allclose(llm_deploy.OnnxLM(fp32, model.context)(ids), model(ids), atol=1e-4)
    int4 = deploy.quantize_onnx_int4(fp32, tmp_path / "m4.onnx", block_size=16)
    ops = deploy.graph_ops(int4)
    assert ops.get("MatMulNBits", 0) == 2 * 4 + 1      # every linear of the 2 blocks, and the output layer
    assert ops.get("MatMul", 0) == 2 * 2               # what is left: Q K^T and P V of each block
    assert llm_deploy.OnnxLM(int4, model.context)(ids).shape == (3, 11, 30)
    speed = llm_deploy.tokens_per_second({"a": model, "b": model}, model.context, rounds=2, min_run_time=0.01)
    assert list(speed.columns) == ["prefill tokens/s", "prefill SD", "decode tokens/s", "decode SD"]
    assert (speed[["prefill tokens/s", "decode tokens/s"]] > 0).all().all()
