"""Options, modes and parameters renamed since checkpoints were first written, so that an
old run folder either loads (the old name is translated) or fails with one line saying
what changed.

RENAMED_OPTIONS:    layer name ("*" for every layer) -> {old option: new option}
RENAMED_MODES:      old mode name -> new mode name
RENAMED_PARAMETERS: layer name -> {old parameter name inside the layer: new name}; a tensor
                    whose shape differs from the new parameter's holds the same values in
                    the same order (reshape it).
"""

RENAMED_OPTIONS: dict[str, dict[str, str]] = {
    "*": {"conv_size": "d_conv"},           # mamba_ssm's name, as mamba and hawk had it
    "mlstm": {"proj_factor": "expand"},     # inner width = expand * d_model, as in mamba
    "hgrn2": {"expand_ratio": "d_state"},   # key width of the state per head, as in mamba2
    "gla": {"gate_low_rank": "decay_rank"},  # rank of the decay map, as in rwkv6
    "rwkv7": {"lora_dim": "low_rank"},      # rank of its low-rank maps (decay, a, gate)
    "hawk": {"c": "gate_scale"},            # the RG-LRU's constant c (8)
}

RENAMED_MODES: dict[str, str] = {"recurrent": "sequential"}  # the reference mode, every family

RENAMED_PARAMETERS: dict[str, dict[str, str]] = {  # one ShortConv module for every layer
    "mamba": {"conv_weight": "conv.weight", "conv_bias": "conv.bias"},
    "hawk": {"conv_weight": "conv.weight", "conv_bias": "conv.bias"},
    "mamba2": {"conv.conv.weight": "conv.weight", "conv.conv.bias": "conv.bias"},
    "mlstm": {"conv.conv.weight": "conv.weight", "conv.conv.bias": "conv.bias"},
}
