#!/usr/bin/env python3
"""make_fixture.py — the transformers reference fixture for ds4's forward pass.

Builds a tiny random DeepseekV4ForCausalLM (transformers 5.17, torch 2.11) that
exercises every path of the architecture, runs it on the CPU in float32 with
eager attention, and writes into one directory (default
tests/fixtures/hf-tiny/ of this repository):

  config.json                 config.to_dict() of the transformers config
  model.safetensors           model.state_dict(), transformers key names
                              (tid2eid stays int64), NOT save_pretrained()
  reference.safetensors       input_ids (I32 [N]) and logits (F32 [N, V]) of
                              one full prefill (use_cache=False)
  intermediates.safetensors   small per-layer activations for debugging:
                              HC streams after each layer at a few positions,
                              compressed rows, indexer top-k sets (sorted,
                              -1 = unused), router expert sets and weights
  manifest.json               versions, seed, dims, sizes, sha256, statistics
                              and the result of every self-check below

Why these choices (hf-reference.md §1.2, §1.3, §5): the dims are the "T0"
tiny config with moe_intermediate_size 32 (instead of 64) so weights, logits
and intermediates stay under 12 MB. The layer pattern is Flash's (sliding,
sliding, CSA, HCA, CSA, HCA), the first 3 layers are hash-routed, the
indexer has 16 heads (fewer heads give exact-zero ties in the top-k), and
the prompt (601 tokens) is longer than the raw window (128), crosses the
indexer top-k (16 rows = 67 tokens), closes 4 HCA windows and is a multiple
of neither 4 nor 128, so a pending partial window exists at the end. Every
parameter and persistent buffer is overwritten from a seeded generator
(transformers' init leaves sinks, biases, APE and tid2eid at zero).

Self-checks (any failure exits non-zero, after printing why):
  * the config has the expected layer types, MLP types, rope dims, and YaRN
    on the "compress" rope with attention_factor 1.0;
  * the rotary inverse frequencies equal an independent restatement of
    ds4's formula (model-spec.md §5.4);
  * the state dict has exactly the expected 172 keys with the expected
    shapes (computed here independently of transformers);
  * lm_head is not tied to the embedding; every tensor was randomised;
    tid2eid rows hold distinct experts < n_routed_experts;
  * logits are finite with a sane spread;
  * no near-tie at any indexer top-k boundary or router top-k boundary
    (relative gap < --tie-gap); otherwise the next seed is tried;
  * the written files reload bit-exactly, and a fresh model loaded from
    model.safetensors (strict) reproduces the logits;
  * the total size is under --max-bytes.
  Reported, not fatal: prefill of --split tokens followed by one-token decode
  against the full prefill (expected <= 2e-5).

Run on a machine with torch and transformers (CUDA is hidden; CPU float32):
    python3 tools/hf-fixture/make_fixture.py [--out DIR] [--seed S]
"""

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time

# Hide GPUs before torch is imported: the reference runs on the CPU.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The tiny config (hf-reference.md §1.3 "T0", moe_intermediate_size 32).
DIMS = {
    "vocab_size": 512,
    "hidden_size": 128,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 128,
    "q_lora_rank": 64,
    "o_groups": 2,
    "o_lora_rank": 32,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
    "moe_intermediate_size": 32,
    "index_n_heads": 16,
    "index_head_dim": 128,
    "index_topk": 16,
    "sliding_window": 128,
    "hc_mult": 4,
    "hc_sinkhorn_iters": 20,
    "hc_eps": 1e-6,
    "swiglu_limit": 2.0,
    "rope_theta": 10000.0,
    "compress_rope_theta": 160000.0,
    "max_position_embeddings": 1048576,
    "rms_norm_eps": 1e-6,
    "routed_scaling_factor": 1.5,
    "norm_topk_prob": True,
    "scoring_func": "sqrtsoftplus",
    "tie_word_embeddings": False,
}
QK_ROPE_DIM = 64
COMPRESS_RATIOS = [0, 0, 4, 128, 4, 128]
NUM_HASH_LAYERS = 3
YARN = {
    "rope_type": "yarn",
    "factor": 16.0,
    "original_max_position_embeddings": 65536,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
}
LAYER_TYPE_OF_RATIO = {
    0: "sliding_attention",
    4: "compressed_sparse_attention",
    128: "heavily_compressed_attention",
}
# Positions whose HC streams are saved after every layer (debugging aid).
HC_POSITIONS = [0, 1, 3, 4, 66, 67, 127, 128, 129, 300, 301, 383, 384, 511, 512, 600]


class CheckFailed(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def log(msg):
    print(msg, flush=True)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, "tests", "fixtures", "hf-tiny"),
                    help="output directory (created if missing)")
    ap.add_argument("--seed", type=int, default=20260514,
                    help="first seed to try (20260514: indexer gap 8.8e-5, router 2.4e-4)")
    ap.add_argument("--seed-tries", type=int, default=8,
                    help="seeds to try when a top-k boundary is a near-tie")
    ap.add_argument("--tokens", type=int, default=601, help="prompt length N")
    ap.add_argument("--split", type=int, default=301, help="prefill length before the decode check")
    ap.add_argument("--threads", type=int, default=8, help="torch CPU threads")
    ap.add_argument("--tie-gap", type=float, default=5e-5,
                    help="relative k-th/(k+1)-th score gap below which a selection counts as a tie")
    ap.add_argument("--max-bytes", type=int, default=12_000_000, help="size budget of the whole fixture")
    return ap.parse_args()


# ---------------------------------------------------------------- expectations

def expected_state_dict_shapes():
    """Every state-dict key and shape, written from hf-reference.md §3 alone."""
    d = DIMS
    D, V, H, hd = d["hidden_size"], d["vocab_size"], d["num_attention_heads"], d["head_dim"]
    rq, G, ro = d["q_lora_rank"], d["o_groups"], d["o_lora_rank"]
    E, K, I = d["n_routed_experts"], d["num_experts_per_tok"], d["moe_intermediate_size"]
    Hi, di, hc = d["index_n_heads"], d["index_head_dim"], d["hc_mult"]
    M = (2 + hc) * hc
    t = {
        "model.embed_tokens.weight": (V, D),
        "lm_head.weight": (V, D),
        "model.norm.weight": (D,),
        "model.hc_head.hc_fn": (hc, hc * D),
        "model.hc_head.hc_base": (hc,),
        "model.hc_head.hc_scale": (1,),
    }
    for L, ratio in enumerate(COMPRESS_RATIOS):
        p = f"model.layers.{L}."
        for h in ("attn_hc", "ffn_hc"):
            t[p + h + ".fn"] = (M, hc * D)
            t[p + h + ".base"] = (M,)
            t[p + h + ".scale"] = (3,)
        t[p + "input_layernorm.weight"] = (D,)
        t[p + "post_attention_layernorm.weight"] = (D,)
        a = p + "self_attn."
        t[a + "q_a_proj.weight"] = (rq, D)
        t[a + "q_a_norm.weight"] = (rq,)
        t[a + "q_b_proj.weight"] = (H * hd, rq)
        t[a + "kv_proj.weight"] = (hd, D)
        t[a + "kv_norm.weight"] = (hd,)
        t[a + "o_a_proj.weight"] = (G * ro, H * hd // G)
        t[a + "o_b_proj.weight"] = (D, G * ro)
        t[a + "sinks"] = (H,)
        if ratio:
            c = 2 if ratio == 4 else 1
            cp = a + "compressor."
            t[cp + "kv_proj.weight"] = (c * hd, D)
            t[cp + "gate_proj.weight"] = (c * hd, D)
            t[cp + "position_bias"] = (ratio, c * hd)
            t[cp + "kv_norm.weight"] = (hd,)
            if ratio == 4:
                ip = cp + "indexer."
                t[ip + "kv_proj.weight"] = (2 * di, D)
                t[ip + "gate_proj.weight"] = (2 * di, D)
                t[ip + "position_bias"] = (4, 2 * di)
                t[ip + "kv_norm.weight"] = (di,)
                t[ip + "q_b_proj.weight"] = (Hi * di, rq)
                t[ip + "scorer.weights_proj.weight"] = (Hi, D)
        m = p + "mlp."
        t[m + "gate.weight"] = (E, D)
        if L < NUM_HASH_LAYERS:
            t[m + "gate.tid2eid"] = (V, K)
        else:
            t[m + "gate.e_score_correction_bias"] = (E,)
        t[m + "experts.gate_up_proj"] = (E, 2 * I, D)
        t[m + "experts.down_proj"] = (E, D, I)
        t[m + "shared_experts.gate_proj.weight"] = (I, D)
        t[m + "shared_experts.up_proj.weight"] = (I, D)
        t[m + "shared_experts.down_proj.weight"] = (D, I)
    return t


def expected_inv_freq(base, yarn):
    """ds4's per-pair RoPE frequencies (model-spec.md §5.4), in float64."""
    n = QK_ROPE_DIM
    ext = [base ** (-2.0 * k / n) for k in range(n // 2)]
    if not yarn:
        return ext
    orig, factor = YARN["original_max_position_embeddings"], YARN["factor"]

    def corr(beta):
        return n * math.log(orig / (beta * 2 * math.pi)) / (2 * math.log(base))

    low = max(0, math.floor(corr(YARN["beta_fast"])))
    high = min(n - 1, math.ceil(corr(YARN["beta_slow"])))
    out = []
    for k in range(n // 2):
        ramp = 1.0 - min(1.0, max(0.0, (k - low) / max(0.001, high - low)))
        out.append(ext[k] / factor * (1.0 - ramp) + ext[k] * ramp)
    return out


# ---------------------------------------------------------------- building

def build_config(transformers):
    try:
        from transformers import DeepseekV4Config
    except ImportError:
        from transformers.models.deepseek_v4.configuration_deepseek_v4 import DeepseekV4Config
    try:
        # The official config.json spelling (legacy keys folded in by __post_init__).
        cfg = DeepseekV4Config(**DIMS, compress_ratios=list(COMPRESS_RATIOS),
                               num_hash_layers=NUM_HASH_LAYERS, qk_rope_head_dim=QK_ROPE_DIM,
                               rope_parameters=dict(YARN))
        how = "legacy keys (compress_ratios, num_hash_layers, qk_rope_head_dim)"
    except Exception as e:  # noqa: BLE001 - fall back to the modern spelling
        log(f"note: legacy config keys refused ({type(e).__name__}: {e}); using layer_types")
        cfg = DeepseekV4Config(
            **DIMS,
            layer_types=[LAYER_TYPE_OF_RATIO[r] for r in COMPRESS_RATIOS],
            mlp_layer_types=["hash_moe"] * NUM_HASH_LAYERS
            + ["moe"] * (len(COMPRESS_RATIOS) - NUM_HASH_LAYERS),
            partial_rotary_factor=QK_ROPE_DIM / DIMS["head_dim"],
            rope_parameters=dict(YARN))
        how = "layer_types / mlp_layer_types / partial_rotary_factor"
    for attr in ("_attn_implementation", "_experts_implementation"):
        try:
            setattr(cfg, attr, "eager")
        except Exception as e:  # noqa: BLE001
            log(f"note: could not set config.{attr} = 'eager': {e}")
    return cfg, how


def check_config(cfg):
    want_types = [LAYER_TYPE_OF_RATIO[r] for r in COMPRESS_RATIOS]
    check(list(cfg.layer_types) == want_types, f"layer_types {cfg.layer_types} != {want_types}")
    want_mlp = ["hash_moe"] * NUM_HASH_LAYERS + ["moe"] * (len(COMPRESS_RATIOS) - NUM_HASH_LAYERS)
    check(list(cfg.mlp_layer_types) == want_mlp, f"mlp_layer_types {cfg.mlp_layer_types} != {want_mlp}")
    rates = dict(cfg.compress_rates)
    check(rates.get("compressed_sparse_attention") == 4 and rates.get("heavily_compressed_attention") == 128,
          f"compress_rates {rates}")
    check(int(cfg.qk_rope_head_dim) == QK_ROPE_DIM, f"qk_rope_head_dim {cfg.qk_rope_head_dim}")
    rp = cfg.rope_parameters
    check(isinstance(rp, dict) and isinstance(rp.get("compress"), dict) and isinstance(rp.get("main"), dict),
          f"rope_parameters not nested main/compress: {rp}")
    comp, main = rp["compress"], rp["main"]
    check(comp.get("rope_type") == "yarn", f"compress rope is not yarn: {comp}")
    check(float(comp.get("attention_factor", -1)) == 1.0, f"compress attention_factor != 1: {comp}")
    check(float(comp.get("rope_theta")) == DIMS["compress_rope_theta"], f"compress theta: {comp}")
    check(float(comp.get("factor")) == YARN["factor"], f"yarn factor: {comp}")
    check(main.get("rope_type", "default") == "default", f"main rope is not plain: {main}")
    check(float(main.get("rope_theta")) == DIMS["rope_theta"], f"main theta: {main}")
    check(not cfg.tie_word_embeddings, "tie_word_embeddings is set")


def check_rotary(model, torch):
    """The model's inverse frequencies against ds4's formula; returns max rel err."""
    rot = model.model.rotary_emb
    worst = 0.0
    for label, base, yarn in (("main", DIMS["rope_theta"], False),
                              ("compress", DIMS["compress_rope_theta"], True)):
        got = getattr(rot, f"{label}_inv_freq", None)
        check(got is not None, f"rotary_emb has no {label}_inv_freq buffer")
        got = got.double().cpu().tolist()
        want = expected_inv_freq(base, yarn)
        check(len(got) == len(want), f"{label} inv_freq has {len(got)} entries, want {len(want)}")
        err = max(abs(g - w) / w for g, w in zip(got, want))
        check(err < 1e-5, f"{label} inv_freq differs from ds4's formula by {err:.3g} (relative)")
        worst = max(worst, err)
        scaling = float(getattr(rot, f"{label}_attention_scaling", 1.0))
        check(abs(scaling - 1.0) < 1e-7, f"{label} attention_scaling {scaling} != 1")
    return worst


def init_rule(name, shape):
    """(mean, std) or 'tid2eid' for one tensor (hf-reference.md §1.3)."""
    if name.endswith(".tid2eid"):
        return "tid2eid"
    if name.endswith(".e_score_correction_bias"):
        return (0.0, 0.1)
    if name == "model.embed_tokens.weight":
        return (0.0, 1.0)
    if name.endswith((".position_bias", ".sinks", "_hc.base", "_hc.scale", "hc_head.hc_base",
                      "hc_head.hc_scale")):
        return (0.0, 1.0)
    if len(shape) == 1 and name.endswith("norm.weight"):
        return (1.0, 0.1)
    if len(shape) >= 2:
        return (0.0, 1.0 / math.sqrt(shape[-1]))
    raise CheckFailed(f"no initialisation rule for {name} {tuple(shape)}")


def randomise(model, seed, torch):
    sd_keys = set(model.state_dict().keys())
    named = {}
    for n, t in list(model.named_parameters()) + list(model.named_buffers()):
        if n in sd_keys:
            named[n] = t
    check(set(named) == sd_keys, f"state dict keys without a parameter/buffer: {sorted(sd_keys - set(named))}")
    gen = torch.Generator().manual_seed(seed)
    E, K = DIMS["n_routed_experts"], DIMS["num_experts_per_tok"]
    with torch.no_grad():
        for name in sorted(named):
            t = named[name]
            rule = init_rule(name, tuple(t.shape))
            if rule == "tid2eid":
                rows = [torch.randperm(E, generator=gen)[:K] for _ in range(t.shape[0])]
                t.copy_(torch.stack(rows).to(t.dtype))
            else:
                mean, std = rule
                t.copy_(torch.randn(tuple(t.shape), generator=gen, dtype=torch.float32) * std + mean)


def check_state_dict(model, torch):
    sd = model.state_dict()
    want = expected_state_dict_shapes()
    missing = sorted(set(want) - set(sd))
    extra = sorted(set(sd) - set(want))
    check(not missing and not extra, f"state dict differs from expectation: missing {missing}, unexpected {extra}")
    for k, shape in want.items():
        check(tuple(sd[k].shape) == shape, f"{k}: shape {tuple(sd[k].shape)}, expected {shape}")
        if k.endswith(".tid2eid"):
            check(sd[k].dtype == torch.int64, f"{k}: dtype {sd[k].dtype}")
            v = sd[k]
            check(int(v.min()) >= 0 and int(v.max()) < DIMS["n_routed_experts"], f"{k}: expert id out of range")
            srt = v.sort(dim=1).values
            check(bool((srt[:, 1:] != srt[:, :-1]).all()), f"{k}: a row repeats an expert")
        else:
            check(sd[k].dtype == torch.float32, f"{k}: dtype {sd[k].dtype}, expected float32")
            v = sd[k].double()
            check(bool(torch.isfinite(v).all()), f"{k}: non-finite values")
            if v.numel() > 1:
                check(float(v.std()) > 1e-3, f"{k}: looks un-randomised (std {float(v.std()):.3g})")
            else:
                check(float(v.item()) not in (0.0, 1.0), f"{k}: looks un-randomised ({float(v.item())})")
    emb, head = model.model.embed_tokens.weight, model.lm_head.weight
    check(emb.data_ptr() != head.data_ptr() and not torch.equal(emb, head), "lm_head is tied to the embedding")
    return len(sd)


# ---------------------------------------------------------------- capture

class Capture:
    """Forward hooks that keep small intermediates of one full prefill."""

    def __init__(self, model, n_tokens, torch):
        self.torch = torch
        self.n = n_tokens
        self.pos = [p for p in HC_POSITIONS if p < n_tokens]
        self.out = {}
        self.index_gaps = []   # relative k-th/(k+1)-th gaps of indexer scores
        self.router_gaps = []  # same for biased router scores
        self.handles = []
        for L, layer in enumerate(model.model.layers):
            self.handles.append(layer.register_forward_hook(self._layer_hook(L)))
            comp = layer.self_attn.compressor
            if comp is not None:
                self.handles.append(comp.register_forward_hook(self._compressor_hook(L)))
                idx = getattr(comp, "indexer", None)
                if idx is not None:
                    self.handles.append(idx.register_forward_hook(self._indexer_hook(L)))
                    self.handles.append(idx.scorer.register_forward_hook(self._scorer_hook(L)))
            self.handles.append(layer.mlp.gate.register_forward_hook(self._gate_hook(L, layer.mlp.gate)))

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles = []

    @staticmethod
    def _first(out):
        return out[0] if isinstance(out, (tuple, list)) else out

    def _layer_hook(self, L):
        def hook(mod, inp, out):
            x = self._first(out)  # [1, N, hc, D]
            self.out[f"layer.{L}.hc_out"] = x.detach()[0, self.pos].float().contiguous().clone()
        return hook

    def _compressor_hook(self, L):
        def hook(mod, inp, out):
            rows = self._first(out)  # [1, 1, T, d]
            self.out[f"layer.{L}.compressed_rows"] = rows.detach()[0, 0].float().contiguous().clone()
        return hook

    def _indexer_hook(self, L):
        def hook(mod, inp, out):
            idx = out.detach()[0].long()  # [N, k], -1 = unused
            big = idx.clone()
            big[big < 0] = 1 << 40
            big = big.sort(dim=-1).values
            big[big == (1 << 40)] = -1
            self.out[f"layer.{L}.indexer_topk"] = big.to(self.torch.int32).contiguous()
        return hook

    def _scorer_hook(self, L):
        torch = self.torch
        k = DIMS["index_topk"]

        def hook(mod, inp, out):
            s = out.detach()[0].double()  # [N, T] raw scores before causal masking
            n, T = s.shape
            for t in range(n):
                cand = (t + 1) // 4
                if cand <= k:
                    continue
                v = s[t, :cand].sort(descending=True).values
                a, b = float(v[k - 1]), float(v[k])
                self.index_gaps.append(abs(a - b) / max(abs(a), abs(b), 1e-30))
        return hook

    def _gate_hook(self, L, gate):
        torch = self.torch
        k = DIMS["num_experts_per_tok"]

        def hook(mod, inp, out):
            logits, weights, indices = out[0].detach(), out[1].detach(), out[2].detach()
            order = indices.long().sort(dim=-1)
            self.out[f"layer.{L}.router_experts"] = order.values.to(torch.int32).contiguous()
            self.out[f"layer.{L}.router_weights"] = weights.float().gather(1, order.indices).contiguous()
            bias = getattr(gate, "e_score_correction_bias", None)
            if bias is not None and L >= NUM_HASH_LAYERS:
                sc = torch.sqrt(torch.nn.functional.softplus(logits.double())) + bias.double()
                v = sc.sort(dim=-1, descending=True).values
                gap = (v[:, k - 1] - v[:, k]).abs() / v[:, k - 1].abs().clamp_min(1e-30)
                self.router_gaps.extend(gap.tolist())
        return hook


# ---------------------------------------------------------------- runs

def run_prefill(model, ids, torch):
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=False)
    return out.logits[0].float().contiguous()


def run_prefill_then_decode(model, ids, split, torch):
    n = ids.shape[1]
    with torch.no_grad():
        pos = torch.arange(split).unsqueeze(0)
        out = model(input_ids=ids[:, :split], position_ids=pos, use_cache=True)
        cache = out.past_key_values
        rows = [out.logits[0].float()]
        for t in range(split, n):
            out = model(input_ids=ids[:, t:t + 1], position_ids=torch.tensor([[t]]),
                        past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            rows.append(out.logits[0].float())
    return torch.cat(rows, dim=0)


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def one_attempt(seed, args, torch, transformers, cfg):
    try:
        from transformers import DeepseekV4ForCausalLM
    except ImportError:
        from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4ForCausalLM
    torch.manual_seed(seed)
    model = DeepseekV4ForCausalLM(cfg).float().eval()
    impl = getattr(model.config, "_attn_implementation", None)
    check(impl in (None, "eager"), f"attention implementation is {impl}, expected eager")
    rot_err = check_rotary(model, torch)
    randomise(model, seed, torch)
    n_keys = check_state_dict(model, torch)

    gen = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, DIMS["vocab_size"], (1, args.tokens), generator=gen, dtype=torch.long)

    cap = Capture(model, args.tokens, torch)
    t0 = time.time()
    logits = run_prefill(model, ids, torch)
    t_prefill = time.time() - t0
    cap.remove()
    check(tuple(logits.shape) == (args.tokens, DIMS["vocab_size"]), f"logits shape {tuple(logits.shape)}")
    check(bool(torch.isfinite(logits).all()), "non-finite logits")
    std = float(logits.std())
    check(0.2 < std < 20.0, f"logit std {std:.3g} is implausible")
    top1 = logits.argmax(dim=-1)
    check(int(top1.unique().numel()) > 1, "the argmax is the same token at every position")
    n_captured_rows = sum(1 for k in cap.out if k.endswith("indexer_topk"))
    check(n_captured_rows == COMPRESS_RATIOS.count(4), f"indexer hooks fired for {n_captured_rows} layers")
    check(len(cap.index_gaps) > 0, "the indexer never had more candidates than top-k")
    return model, ids, logits, cap, {
        "seed": seed, "state_dict_keys": n_keys, "rotary_max_rel_err": rot_err,
        "prefill_seconds": round(t_prefill, 3), "logit_std": std,
        "logit_max_abs": float(logits.abs().max()),
        "indexer_selection_events": len(cap.index_gaps),
        "indexer_min_rel_gap": min(cap.index_gaps),
        "router_selection_events": len(cap.router_gaps),
        "router_min_rel_gap": min(cap.router_gaps) if cap.router_gaps else None,
    }


def main():
    args = parse_args()
    check(args.tokens % 4 and args.tokens % 128, "--tokens must be a multiple of neither 4 nor 128")
    check(args.tokens > 4 * DIMS["index_topk"] + 3 and args.tokens >= 3 * 128, "--tokens too short")
    check(0 < args.split < args.tokens, "--split must be inside the prompt")
    import torch
    import transformers
    import safetensors
    import safetensors.torch as st
    torch.set_num_threads(args.threads)
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"safetensors {safetensors.__version__}, python {platform.python_version()}")

    cfg, cfg_how = build_config(transformers)
    check_config(cfg)
    log(f"config built from {cfg_how}: layer_types {cfg.layer_types}")

    stats = None
    tried = []
    for seed in range(args.seed, args.seed + args.seed_tries):
        model, ids, logits, cap, stats = one_attempt(seed, args, torch, transformers, cfg)
        rg = stats["router_min_rel_gap"]
        tie = stats["indexer_min_rel_gap"] < args.tie_gap or (rg is not None and rg < args.tie_gap)
        tried.append({"seed": seed, "indexer_min_rel_gap": stats["indexer_min_rel_gap"], "router_min_rel_gap": rg})
        log(f"seed {seed}: logit std {stats['logit_std']:.3f}, indexer min gap "
            f"{stats['indexer_min_rel_gap']:.3g} over {stats['indexer_selection_events']} events, "
            f"router min gap {rg if rg is None else format(rg, '.3g')}")
        if not tie:
            break
        log(f"seed {seed}: near-tie at a top-k boundary; trying the next seed")
    else:
        raise CheckFailed(f"every seed had a near-tie: {tried}")

    log(f"decode check: prefill {args.split} + {args.tokens - args.split} single-token steps ...")
    t0 = time.time()
    try:
        dec = run_prefill_then_decode(model, ids, args.split, torch)
        d = (dec - logits).abs()
        decode = {"max_abs": float(d.max()), "mean_abs": float(d.mean()),
                  "argmax_agree": float((dec.argmax(-1) == logits.argmax(-1)).float().mean()),
                  "seconds": round(time.time() - t0, 2)}
        decode["ok"] = decode["max_abs"] <= 2e-5 and decode["argmax_agree"] == 1.0
    except Exception as e:  # noqa: BLE001 - reported, the prefill fixture stays valid
        decode = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    log(f"decode check: {decode}")

    os.makedirs(args.out, exist_ok=True)
    paths = {name: os.path.join(args.out, name) for name in
             ("config.json", "model.safetensors", "reference.safetensors",
              "intermediates.safetensors", "manifest.json")}
    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    st.save_file(sd, paths["model.safetensors"], metadata={"format": "pt"})
    ref = {"input_ids": ids[0].to(torch.int32).contiguous(), "logits": logits}
    st.save_file(ref, paths["reference.safetensors"], metadata={"format": "pt"})
    inter = {k: v.contiguous() for k, v in cap.out.items()}
    inter["hc_positions"] = torch.tensor(cap.pos, dtype=torch.int32)
    st.save_file(inter, paths["intermediates.safetensors"], metadata={"format": "pt"})
    with open(paths["config.json"], "w") as f:
        json.dump(cfg.to_dict(), f, indent=2, sort_keys=True, default=str)
        f.write("\n")

    # Reload everything that was written and re-run from the file alone.
    back = st.load_file(paths["model.safetensors"])
    check(set(back) == set(sd), "model.safetensors keys differ after reload")
    for k in sd:
        check(back[k].dtype == sd[k].dtype and torch.equal(back[k], sd[k]), f"{k} differs after reload")
    rback = st.load_file(paths["reference.safetensors"])
    check(torch.equal(rback["logits"], logits) and torch.equal(rback["input_ids"].long(), ids[0]),
          "reference.safetensors differs after reload")
    try:
        from transformers import DeepseekV4ForCausalLM
    except ImportError:
        from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4ForCausalLM
    fresh = DeepseekV4ForCausalLM(cfg).float().eval()
    fresh.load_state_dict(back, strict=True)
    again = run_prefill(fresh, ids, torch)
    reload_err = float((again - logits).abs().max())
    check(reload_err <= 1e-6, f"a fresh model loaded from model.safetensors differs by {reload_err:.3g}")

    files = {}
    total = 0
    for name in ("config.json", "model.safetensors", "reference.safetensors", "intermediates.safetensors"):
        size = os.path.getsize(paths[name])
        files[name] = {"bytes": size, "sha256": sha256_of(paths[name])}
        total += size
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__, "safetensors": safetensors.__version__}
    try:
        import numpy
        versions["numpy"] = numpy.__version__
    except ImportError:
        pass
    manifest = {
        "generator": "tools/hf-fixture/make_fixture.py",
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": versions,
        "platform": platform.platform(),
        "torch_threads": args.threads,
        "dtype": "float32", "device": "cpu", "attention": "eager",
        "config_built_from": cfg_how,
        "dims": dict(DIMS, qk_rope_head_dim=QK_ROPE_DIM, compress_ratios=COMPRESS_RATIOS,
                     num_hash_layers=NUM_HASH_LAYERS, rope_scaling=YARN),
        "n_tokens": args.tokens,
        "decode_split": args.split,
        "seeds_tried": tried,
        "stats": stats,
        "checks": {"reload_max_abs": reload_err, "decode": decode, "tie_gap": args.tie_gap},
        "files": files,
        "total_bytes_without_manifest": total,
    }
    with open(paths["manifest.json"], "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    total += os.path.getsize(paths["manifest.json"])

    log("")
    log(f"fixture written to {args.out}")
    for name, info in files.items():
        log(f"  {name:28s} {info['bytes']:>10d} bytes  {info['sha256'][:16]}")
    log(f"  total {total} bytes (budget {args.max_bytes})")
    log(f"  seed {stats['seed']}, N {args.tokens}, logits std {stats['logit_std']:.4f}, "
        f"max |logit| {stats['logit_max_abs']:.3f}")
    log(f"  indexer: {stats['indexer_selection_events']} top-k events, min relative gap "
        f"{stats['indexer_min_rel_gap']:.3g}; router min gap {stats['router_min_rel_gap']}")
    log(f"  reload max |d| {reload_err:.3g}; decode vs prefill {decode}")
    check(total <= args.max_bytes, f"fixture is {total} bytes, over the {args.max_bytes} budget")
    if not decode.get("ok"):
        log("WARNING: prefill+decode does not match the full prefill (see manifest.json); "
            "the prefill logits are still the reference")
    log("all self-checks passed")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CheckFailed as e:
        print(f"make_fixture: self-check failed: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
