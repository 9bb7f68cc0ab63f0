"""Tiny random transformers models of each supported type, saved into a folder."""

from __future__ import annotations

import importlib
import sys
import warnings

import torch

VOCAB = 61


def _import_torch_paths(module: str):
    """Import a transformers modeling module with its plain-PyTorch functions: hidden from fla
    while it is imported, it does not bind fla's Triton kernels (which need a GPU driver)."""
    if module in sys.modules:
        return
    saved = {k: sys.modules[k] for k in list(sys.modules) if k == "fla" or k.startswith("fla.")}
    sys.modules["fla"] = None  # import fla -> ImportError -> transformers falls back to torch
    try:
        importlib.import_module(module)
    finally:
        del sys.modules["fla"]
        sys.modules.update(saved)


def _xlstm_classes():
    """transformers' xLSTM config and model with its own native PyTorch kernels: with the
    `xlstm` package installed transformers imports xlstm.xlstm_large, which needs
    `mlstm_kernels` (not installed); told xlstm is absent, it uses its native path."""
    import transformers.utils as tu
    from transformers.utils import import_utils
    saved = tu.is_xlstm_available, import_utils.is_xlstm_available
    tu.is_xlstm_available = import_utils.is_xlstm_available = lambda: False
    try:
        from transformers.models.xlstm import configuration_xlstm, modeling_xlstm
    finally:
        tu.is_xlstm_available, import_utils.is_xlstm_available = saved
    return configuration_xlstm.xLSTMConfig, modeling_xlstm.xLSTMForCausalLM


def tiny(model_type: str):
    """(config, model class) of a tiny model of `model_type`."""
    import transformers as tf
    if model_type in ("qwen3_next", "kimi_linear"):
        _import_torch_paths(f"transformers.models.{model_type}.modeling_{model_type}")
    if model_type == "mamba":
        return tf.MambaConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2,
                              state_size=4, expand=2, conv_kernel=3), tf.MambaForCausalLM
    if model_type == "falcon_mamba":
        return tf.FalconMambaConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2,
                                    state_size=4, expand=2, conv_kernel=3,
                                    tie_word_embeddings=False), tf.FalconMambaForCausalLM
    if model_type == "mamba2":
        return tf.Mamba2Config(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2,
                               state_size=4, expand=2, conv_kernel=3, head_dim=8, num_heads=4,
                               n_groups=2, chunk_size=8), tf.Mamba2ForCausalLM
    if model_type == "recurrent_gemma":  # 4 blocks: recurrent, recurrent, attention, recurrent
        return tf.RecurrentGemmaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=48,
                                       num_hidden_layers=4, num_attention_heads=2, lru_width=12,
                                       attention_window_size=5, conv1d_width=3,
                                       num_key_value_heads=1, logits_soft_cap=3.0
                                       ), tf.RecurrentGemmaForCausalLM
    if model_type == "qwen3_next":  # 4 blocks: 3 Gated DeltaNet then gated attention; MoE on 2, 4
        return tf.Qwen3NextConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=24,
                                  num_hidden_layers=4, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=8, linear_num_key_heads=2,
                                  linear_num_value_heads=4, linear_key_head_dim=4,
                                  linear_value_head_dim=8, linear_conv_kernel_dim=3,
                                  num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8,
                                  shared_expert_intermediate_size=12, decoder_sparse_step=2,
                                  max_position_embeddings=2048), tf.Qwen3NextForCausalLM
    if model_type == "kimi_linear":  # KDA, MLA, KDA; dense MLP then MoE (2 groups of 2 experts)
        return tf.KimiLinearConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=24,
                                   num_hidden_layers=3, num_attention_heads=2,
                                   num_key_value_heads=2, kv_lora_rank=6, qk_nope_head_dim=4,
                                   qk_rope_head_dim=2, v_head_dim=6, linear_num_heads=2,
                                   linear_head_dim=4, linear_conv_kernel_dim=3,
                                   layer_types=["linear_attention", "full_attention",
                                                "linear_attention"],
                                   mlp_layer_types=["dense", "sparse", "sparse"],
                                   num_local_experts=4, num_experts_per_tok=2, n_group=2,
                                   topk_group=1, moe_intermediate_size=8, n_shared_experts=1,
                                   routed_scaling_factor=2.5), tf.KimiLinearForCausalLM
    if model_type == "bamba":  # Mamba-2, attention (half rotary), Mamba-2; SwiGLU in each
        return tf.BambaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=24,
                              num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                              attn_layer_indices=[1], mamba_n_heads=4, mamba_d_head=8,
                              mamba_n_groups=2, mamba_d_state=4, mamba_d_conv=3, mamba_expand=2,
                              mamba_chunk_size=8), tf.BambaForCausalLM
    if model_type == "nemotron_h":  # M - * E M: blocks (mamba2 + MLP), (attention + MoE), mamba2
        return tf.NemotronHConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=5,
                                  layers_block_type=["linear_attention", "mlp", "full_attention",
                                                     "moe", "linear_attention"],
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=4,
                                  intermediate_size=24, mamba_num_heads=4, mamba_head_dim=8,
                                  n_groups=2, ssm_state_size=4, conv_kernel=3, expand=2,
                                  chunk_size=8, n_routed_experts=4, num_experts_per_tok=2,
                                  moe_intermediate_size=8, moe_shared_expert_intermediate_size=12,
                                  n_group=2, topk_group=1, routed_scaling_factor=2.5
                                  ), tf.NemotronHForCausalLM
    if model_type == "granitemoehybrid":  # Mamba-2, rotary attention, Mamba-2; MoE + shared MLP
        return tf.GraniteMoeHybridConfig(
            vocab_size=VOCAB, hidden_size=16, intermediate_size=8, shared_intermediate_size=12,
            num_hidden_layers=3,
            layer_types=["linear_attention", "full_attention", "linear_attention"],
            num_attention_heads=4, num_key_value_heads=2, mamba_n_heads=4, mamba_d_head=8,
            mamba_n_groups=2, mamba_d_state=4, mamba_d_conv=3, mamba_expand=2, mamba_chunk_size=8,
            num_local_experts=4, num_experts_per_tok=2, embedding_multiplier=3.0,
            residual_multiplier=0.5, attention_multiplier=0.3, logits_scaling=2.0,
            position_embedding_type="rope"), tf.GraniteMoeHybridForCausalLM
    if model_type == "jamba":  # mamba + MLP, mamba + MoE, attention + MLP, mamba + MoE
        return tf.JambaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=24,
                              num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                              num_experts=4, num_experts_per_tok=2, expert_layer_period=2,
                              expert_layer_offset=1, attn_layer_period=4, attn_layer_offset=2,
                              mamba_d_state=4, mamba_d_conv=3, mamba_expand=2, mamba_dt_rank=3,
                              use_mamba_kernels=False), tf.JambaForCausalLM
    if model_type == "lfm2":  # conv, attention, conv (untied head: the tied one is the default)
        return tf.Lfm2Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=36,
                             num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                             layer_types=["conv", "full_attention", "conv"], conv_L_cache=3,
                             block_multiple_of=8, block_ffn_dim_multiplier=1.0,
                             tie_word_embeddings=False), tf.Lfm2ForCausalLM
    if model_type == "minimax":  # lightning, softmax, lightning attention; a MoE after each
        return tf.MiniMaxConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=24,
                                num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                head_dim=4, num_local_experts=4, num_experts_per_tok=2,
                                block_size=8, layer_types=["linear_attention", "full_attention",
                                                           "linear_attention"],
                                linear_attn_alpha_factor=1.5, linear_attn_beta_factor=0.7,
                                full_attn_alpha_factor=1.2, full_attn_beta_factor=0.8,
                                mlp_alpha_factor=1.1, mlp_beta_factor=0.9), tf.MiniMaxForCausalLM
    if model_type == "xlstm":  # 2 mLSTM blocks (xLSTM-7B layout). transformers sizes its cache
        config, cls = _xlstm_classes()  # with q, k, v widths rounded up to multiples of 64:
        return config(vocab_size=VOCAB, hidden_size=128, num_heads=2, num_blocks=2,  # 64, 128
                      qk_dim_factor=0.5, v_dim_factor=1.0, ffn_round_up_to_multiple_of=8,
                      gate_soft_cap=3.0, output_logit_soft_cap=4.0, mode="inference",
                      chunk_size=8), cls
    if model_type == "rwkv":  # RWKV-4, 2 layers; inference rescaling off (it is exact up to eps)
        return tf.RwkvConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2,
                             intermediate_size=24, rescale_every=0,
                             context_length=2048), tf.RwkvForCausalLM
    if model_type == "falcon_h1":  # attention + Mamba-2 (24 wide, no gated norm) in each layer
        return tf.FalconH1Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=24,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 mamba_d_ssm=24, mamba_n_heads=4, mamba_d_head=6,
                                 mamba_n_groups=2, mamba_d_state=4, mamba_d_conv=3,
                                 mamba_chunk_size=8, embedding_multiplier=1.7,
                                 lm_head_multiplier=0.6, mlp_multipliers=[1.3, 0.8],
                                 key_multiplier=1.2, attention_in_multiplier=0.9,
                                 attention_out_multiplier=1.1, ssm_in_multiplier=1.25,
                                 ssm_out_multiplier=0.7, ssm_multipliers=[0.5, 1.5, 0.8, 1.2, 2.0]
                                 ), tf.FalconH1ForCausalLM
    if model_type == "zamba2":  # M H M H H: shared block 0 at hybrid uses 0 and 2, 1 at use 1
        return tf.Zamba2Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=24,
                               num_hidden_layers=5, layers_block_type=[
                                   "linear_attention", "hybrid", "linear_attention", "hybrid",
                                   "hybrid"], num_mem_blocks=2, num_attention_heads=4,
                               use_shared_attention_adapter=True, adapter_rank=4,
                               use_mem_rope=True, n_mamba_heads=4, mamba_ngroups=2,
                               mamba_d_state=4, mamba_d_conv=3, chunk_size=8
                               ), tf.Zamba2ForCausalLM
    raise KeyError(model_type)


def save_tiny(model_type: str, folder, seed: int = 0):
    """Build a tiny random `model_type` model, save it into `folder`; returns it (eval)."""
    config, cls = tiny(model_type)
    config.eos_token_id = config.bos_token_id = config.pad_token_id = None  # greedy runs to the end
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():  # transformers initialises some parameters to constants (D = 1,
        for p in model.parameters():  # norms = 1): perturb all so that a misplaced one shows
            p.add_(0.1 * torch.randn_like(p))
        for name, b in model.named_buffers():  # MoE balancing biases (they steer the routing)
            if name.endswith("e_score_correction_bias"):
                b.add_(0.1 * torch.randn_like(b))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(folder)
    return model
