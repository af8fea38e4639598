"""Training-speed options: the float32 matrix mode (TF32, GPUs), bf16
autocast of the residual trunks (GPUs, and CPUs whose oneDNN kernels have
bf16 instructions: AVX512_BF16 or AMX), and channels_last activations.

Owns `PRECISIONS`, `set_fp32_mode` and `apply_training_speed`; model/train.py
(--precision, --channels-last), benchmarks/train_bench.py and
scripts/train_shipped.py use them. None of them changes what a network
computes beyond rounding, and none is stored with the weights: an exported
model is evaluated, binned and coded in plain float32.

precision:
  fp32  float32 everywhere, TF32 off (the reference's arithmetic);
  tf32  float32 tensors, matrix products and convolutions on the TF32 units
        (10-bit mantissa inputs, float32 sums);
  bf16  as tf32, and the residual stacks (most of the arithmetic) run under
        bf16 autocast. The heads, the input convolutions and every density
        stay in float32: a pixel mean in bf16 carries about 8 bits, coarser
        than half a pixel bin (1/255 on the [-1, 1] scale), which would make
        the discretized likelihood noisy.
"""
import contextlib

import torch

PRECISIONS = ("fp32", "tf32", "bf16")


def set_fp32_mode(tf32):
    """TF32 on (True) or off (False) for CUDA matrix products and cuDNN
    convolutions (PyTorch's default leaves cuDNN convolutions on TF32)."""
    torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
    torch.backends.cudnn.allow_tf32 = bool(tf32)


@contextlib.contextmanager
def plain_fp32():
    """TF32 off within the context (honest evaluations), restored after."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    set_fp32_mode(False)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def trunks(model):
    """The residual stacks of an HVAE (its convolutions' bulk)."""
    blocks = [model.infer_res0, model.infer_res1, model.gen_res1, model.gen_res0]
    blocks += list(model.deepinfer_res) + list(model.deepgen_res)
    return [b for b in blocks if not isinstance(b, torch.nn.Identity)]


class _Autocast:
    """Forward hooks that run one module under bf16 autocast and hand back
    float32. Hooks (not a wrapped forward) so that copy.deepcopy of the model
    (the trainer's evaluation copies) keeps them working on the copy."""

    def __init__(self, device_type):
        self.device_type = device_type
        self.active = []

    def enter(self, module, inputs):
        ctx = torch.autocast(self.device_type, dtype=torch.bfloat16)
        ctx.__enter__()
        self.active.append(ctx)

    def leave(self, module, inputs, output):
        self.active.pop().__exit__(None, None, None)
        return output.float()


def apply_training_speed(model, precision="fp32", channels_last=False, device_type="cuda"):
    """Set up `model` (an HVAE) for fast training: see the module docstring.
    Returns the model. ValueError for an unknown precision."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if device_type == "cuda":
        set_fp32_mode(precision != "fp32")
    model.channels_last = bool(channels_last)
    if precision == "bf16":
        hooks = _Autocast(device_type)
        for block in trunks(model):
            block.register_forward_pre_hook(hooks.enter)
            block.register_forward_hook(hooks.leave)
    return model
